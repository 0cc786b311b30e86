-- revision: c04
-- down_revision: 0000
-- message: expect adding-required-field

-- +upgrade
ALTER TABLE accounts ADD COLUMN region text NOT NULL;

-- +downgrade
