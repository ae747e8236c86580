SELECT s.user_id, g.events FROM silver.events s JOIN gold.hourly_metrics g ON date_trunc('hour', s.ts) = g.hour LIMIT 5
