\set c random(1, 10000)
BEGIN;
INSERT INTO wp.orders (customer, amount) VALUES ('key-' || :c, 1299);
END;
