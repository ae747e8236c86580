INSERT INTO silver.events SELECT * FROM silver.events
