-- revision: c14
-- down_revision: 0000
-- message: expect adding-serial-primary-key-field

-- +upgrade
ALTER TABLE orders DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (id, account_id);

-- +downgrade
