-- revision: 0000
-- down_revision:
-- message: base tables the cases change

-- +upgrade
CREATE TABLE accounts (
    id      bigint PRIMARY KEY,
    email   text   NOT NULL,
    plan    text,
    balance bigint NOT NULL DEFAULT 0
);
CREATE TABLE orders (
    id         bigint PRIMARY KEY,
    account_id bigint NOT NULL,
    total      numeric(12, 2)
);
CREATE INDEX ix_orders_total ON orders (total);

-- +downgrade
DROP TABLE orders;
DROP TABLE accounts;
