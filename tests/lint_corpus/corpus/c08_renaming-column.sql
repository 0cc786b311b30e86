-- revision: c08
-- down_revision: 0000
-- message: expect renaming-column

-- +upgrade
ALTER TABLE accounts RENAME COLUMN email TO email_address;

-- +downgrade
