-- revision: c13
-- down_revision: 0000
-- message: expect ban-drop-column

-- +upgrade
ALTER TABLE accounts DROP COLUMN plan;

-- +downgrade
