\set c random(1, 10000)
BEGIN;
INSERT INTO wp.orders (customer, amount) VALUES ('key-' || :c, 1299);
INSERT INTO wp.outbox (id, topic, key, event_type, source, content_type, payload, headers, traceparent, tracestate, occurred_at) VALUES ((lpad(to_hex((extract(epoch from clock_timestamp())*1000000)::bigint),16,'0') || substr(md5(random()::text),1,16))::uuid, 'orders', 'key-' || :c, 'order.placed', '/bench', 'application/json', convert_to('{"order_id":123456,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}', 'UTF8'), '{}', NULL, NULL, now());
END;
