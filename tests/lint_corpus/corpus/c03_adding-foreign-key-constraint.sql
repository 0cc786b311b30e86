-- revision: c03
-- down_revision: 0000
-- message: expect adding-foreign-key-constraint

-- +upgrade
ALTER TABLE orders
    ADD CONSTRAINT fk_orders_account FOREIGN KEY (account_id) REFERENCES accounts (id);

-- +downgrade
