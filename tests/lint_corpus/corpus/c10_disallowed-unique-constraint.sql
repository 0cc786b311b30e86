-- revision: c10
-- down_revision: 0000
-- message: expect disallowed-unique-constraint

-- +upgrade
ALTER TABLE accounts ADD CONSTRAINT uq_accounts_email UNIQUE (email);

-- +downgrade
