-- revision: c07
-- down_revision: 0000
-- message: expect changing-column-type

-- +upgrade
ALTER TABLE orders ALTER COLUMN total TYPE numeric(14, 2);

-- +downgrade
