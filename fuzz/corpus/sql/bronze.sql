SELECT "partition", max("offset"), CAST(payload AS VARCHAR) FROM bronze.events WHERE error IS NULL GROUP BY 1, 3
