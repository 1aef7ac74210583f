-- Alert emails go through the one mail outbox (`mail_outbox`, appliance::mail), queued in
-- the transaction that raises or clears the alert and sent by the portal's mailer; the
-- columns that made `alerts` an outbox of its own are gone. An email still owed by them
-- when this runs is queued in the outbox first, one row per recipient.
INSERT INTO mail_outbox (recipient, subject, body, about, created_at_us, next_attempt_at_us)
SELECT trim(r.address),
       '[Plantgate] alert ' || owed.what || ': ' || ru.name || ' on ' || d.serial,
       'Alert ' || owed.what || E'.\n\nRule: ' || ru.name || E'\nDevice: ' || d.serial
           || E'\nAlert id: alert:' || a.id || E'\n',
       'alert:' || a.id,
       (extract(epoch FROM now()) * 1000000)::bigint,
       (extract(epoch FROM now()) * 1000000)::bigint
FROM alerts a
JOIN alert_rules ru ON ru.id = a.rule_id
JOIN devices d ON d.id = a.device_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN a.raise_notified_at_us IS NULL THEN 'RAISED' ELSE 'cleared' END AS what
) owed
CROSS JOIN LATERAL unnest(string_to_array(ru.notify_email, ',')) AS r(address)
WHERE trim(r.address) <> ''
  AND (a.raise_notified_at_us IS NULL
       OR (a.cleared_at_us IS NOT NULL AND a.clear_notified_at_us IS NULL));

ALTER TABLE alerts
    DROP COLUMN raise_notified_at_us,
    DROP COLUMN clear_notified_at_us,
    DROP COLUMN notify_attempts;
