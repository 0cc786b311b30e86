-- revision: c15
-- down_revision: 0000
-- message: expect prefer-robust-stmts
-- transaction: none
-- +upgrade
CREATE INDEX CONCURRENTLY ix_orders_account ON orders (account_id);

-- +downgrade
