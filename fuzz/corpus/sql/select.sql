SELECT event_type, count(*) AS n FROM silver.events WHERE user_id IS NOT NULL GROUP BY event_type ORDER BY n DESC LIMIT 10
