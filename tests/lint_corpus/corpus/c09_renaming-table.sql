-- revision: c09
-- down_revision: 0000
-- message: expect renaming-table

-- +upgrade
ALTER TABLE orders RENAME TO purchases;

-- +downgrade
