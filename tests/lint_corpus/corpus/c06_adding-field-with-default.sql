-- revision: c06
-- down_revision: 0000
-- message: expect adding-field-with-default

-- +upgrade
ALTER TABLE accounts ADD COLUMN token uuid DEFAULT gen_random_uuid();

-- +downgrade
