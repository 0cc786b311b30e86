-- revision: c02
-- down_revision: 0000
-- message: expect ban-concurrent-index-creation-in-transaction

-- +upgrade
CREATE INDEX CONCURRENTLY ix_orders_account ON orders (account_id);

-- +downgrade
