-- revision: c01
-- down_revision: 0000
-- message: expect require-concurrent-index-creation

-- +upgrade
CREATE INDEX ix_orders_account ON orders (account_id);

-- +downgrade
