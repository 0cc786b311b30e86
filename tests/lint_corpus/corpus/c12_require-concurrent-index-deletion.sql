-- revision: c12
-- down_revision: 0000
-- message: expect require-concurrent-index-deletion

-- +upgrade
DROP INDEX ix_orders_total;

-- +downgrade
