-- revision: c11
-- down_revision: 0000
-- message: expect constraint-missing-not-valid

-- +upgrade
ALTER TABLE orders ADD CONSTRAINT ck_orders_total CHECK (total >= 0);

-- +downgrade
