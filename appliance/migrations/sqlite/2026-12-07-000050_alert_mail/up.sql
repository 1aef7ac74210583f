-- Alert emails go through the one mail outbox (`mail_outbox`, appliance::mail), queued in
-- the transaction that raises or clears the alert and sent by the portal's mailer; the
-- columns that made `alerts` an outbox of its own are gone. An email still owed by them
-- when this runs is queued in the outbox first, one row per recipient.
WITH RECURSIVE
owed (alert_id, what, rest) AS (
    SELECT a.id,
           CASE WHEN a.raise_notified_at_us IS NULL THEN 'RAISED' ELSE 'cleared' END,
           ru.notify_email || ','
    FROM alerts a JOIN alert_rules ru ON ru.id = a.rule_id
    WHERE a.raise_notified_at_us IS NULL
       OR (a.cleared_at_us IS NOT NULL AND a.clear_notified_at_us IS NULL)
),
split (alert_id, what, address, rest) AS (
    SELECT alert_id, what, '', rest FROM owed
    UNION ALL
    SELECT alert_id, what, trim(substr(rest, 1, instr(rest, ',') - 1)), substr(rest, instr(rest, ',') + 1)
    FROM split WHERE rest <> ''
)
INSERT INTO mail_outbox (recipient, subject, body, about, created_at_us, next_attempt_at_us)
SELECT s.address,
       '[Plantgate] alert ' || s.what || ': ' || ru.name || ' on ' || d.serial,
       'Alert ' || s.what || '.' || char(10) || char(10) || 'Rule: ' || ru.name || char(10)
           || 'Device: ' || d.serial || char(10) || 'Alert id: alert:' || a.id || char(10),
       'alert:' || a.id,
       CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER),
       CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
FROM split s
JOIN alerts a ON a.id = s.alert_id
JOIN alert_rules ru ON ru.id = a.rule_id
JOIN devices d ON d.id = a.device_id
WHERE s.address <> '';

ALTER TABLE alerts DROP COLUMN raise_notified_at_us;
ALTER TABLE alerts DROP COLUMN clear_notified_at_us;
ALTER TABLE alerts DROP COLUMN notify_attempts;
