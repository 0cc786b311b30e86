-- revision: c05
-- down_revision: 0000
-- message: expect adding-not-nullable-field

-- +upgrade
ALTER TABLE accounts ALTER COLUMN plan SET NOT NULL;

-- +downgrade
