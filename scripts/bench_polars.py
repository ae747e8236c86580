"""The demo pipeline's job done by a short polars script, for `smelter bench`'s files-source
run to measure Smelter against (BENCHMARKS.md): read the NDJSON files, write bronze (each
line with its file and line number), parse and flatten the valid records into silver
(deduplicated by `event_id`, the demo's two quarantine rules applied, the rest quarantined
with the rule), and write the demo's three gold tables — all as Delta tables with the
`deltalake` package. Prints one JSON object: its CPU and wall seconds, peak memory, and the
rows each table holds (which `smelter bench` checks against the generator's labels).

Usage: python bench_polars.py --input DIR --out DIR"""

import argparse
import datetime as dt
import json
import resource
import time
from pathlib import Path

import polars as pl
from deltalake import write_deltalake

SCHEMA = pl.Struct({
    "event_id": pl.String,
    "event_type": pl.String,
    "ts": pl.String,
    "session_id": pl.String,
    "user": pl.Struct({"id": pl.String, "country": pl.String, "device": pl.String}),
    "page": pl.Struct({"url": pl.String, "referrer": pl.String}),
    "product": pl.Struct({"id": pl.String, "category": pl.String, "price": pl.Float64}),
    "quantity": pl.Int64,
})


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--input", type=Path, required=True)
    args.add_argument("--out", type=Path, required=True)
    options = args.parse_args()
    started = time.monotonic()
    now = dt.datetime.now(dt.timezone.utc)

    # Bronze: every line, with where it came from.
    frames = []
    for path in sorted(options.input.glob("*.ndjson")):
        lines = path.read_text().splitlines()
        frames.append(pl.DataFrame({"payload": lines}).with_columns(
            file=pl.lit(path.name), line=pl.int_range(1, pl.len() + 1)))
    raw = pl.concat(frames).with_columns(
        ingested_at=pl.lit(now), ingest_date=pl.lit(now.date()))
    write_deltalake(str(options.out / "bronze"), raw, partition_by=["ingest_date"])

    # Silver: parsed, flattened, checked, deduplicated; the rest quarantined.
    parsed = raw.with_columns(
        parses=pl.col("payload").str.json_path_match("$.event_id").is_not_null())
    bad_json = parsed.filter(~pl.col("parses")).select(
        "payload", "file", "line", rule=pl.lit("_parse"))
    events = parsed.filter(pl.col("parses")).with_columns(
        event=pl.col("payload").str.json_decode(SCHEMA)).select(
        "file", "line", "payload",
        pl.col("event").struct.field("event_id"),
        pl.col("event").struct.field("event_type"),
        pl.col("event").struct.field("ts").str.to_datetime(time_zone="UTC"),
        pl.col("event").struct.field("session_id"),
        pl.col("event").struct.field("user").struct.field("id").alias("user_id"),
        pl.col("event").struct.field("user").struct.field("country").alias("user_country"),
        pl.col("event").struct.field("user").struct.field("device").alias("user_device"),
        pl.col("event").struct.field("page").struct.field("url").alias("page_url"),
        pl.col("event").struct.field("page").struct.field("referrer").alias("page_referrer"),
        pl.col("event").struct.field("product").struct.field("id").alias("product_id"),
        pl.col("event").struct.field("product").struct.field("category").alias("product_category"),
        pl.col("event").struct.field("product").struct.field("price")
        .cast(pl.Decimal(10, 2)).alias("product_price"),
        pl.col("event").struct.field("quantity"),
    )
    price = pl.col("product_price")
    events = events.with_columns(rule=pl.when(pl.col("user_id").is_null()).then(pl.lit("has_user"))
                                 .when(price.is_not_null() & ((price < 0) | (price > 100000)))
                                 .then(pl.lit("sane_price")))
    quarantine = pl.concat([bad_json, events.filter(pl.col("rule").is_not_null())
                            .select("payload", "file", "line", "rule")])
    silver = (events.filter(pl.col("rule").is_null())
              .unique(subset=["event_id"], keep="first", maintain_order=True)
              .drop("rule", "payload"))
    write_deltalake(str(options.out / "silver"), silver)
    write_deltalake(str(options.out / "quarantine"), quarantine)

    # Gold: the demo's three aggregates.
    revenue = pl.when(pl.col("event_type") == "purchase").then(
        pl.col("product_price") * pl.col("quantity")).otherwise(0)
    hourly = silver.group_by(pl.col("ts").dt.truncate("1h").alias("hour"), "event_type").agg(
        events=pl.len(), users=pl.col("user_id").n_unique(), revenue=revenue.sum())
    daily = silver.group_by(pl.col("ts").dt.date().alias("day")).agg(
        events=pl.len(), users=pl.col("user_id").n_unique(),
        sessions=pl.col("session_id").n_unique(),
        purchases=(pl.col("event_type") == "purchase").sum(), revenue=revenue.sum())
    spend = revenue.sum()
    segments = silver.group_by("user_id").agg(
        events=pl.len(), spend=spend, last_seen=pl.col("ts").max(),
        purchases=(pl.col("event_type") == "purchase").sum(),
        carts=(pl.col("event_type") == "add_to_cart").sum(),
    ).with_columns(segment=pl.when(pl.col("spend") >= 1000).then(pl.lit("vip"))
                   .when(pl.col("purchases") > 0).then(pl.lit("buyer"))
                   .when(pl.col("carts") > 0).then(pl.lit("shopper"))
                   .otherwise(pl.lit("browser"))).drop("purchases", "carts")
    for name, table in [("hourly_metrics", hourly), ("daily_summary", daily),
                        ("user_segments", segments)]:
        write_deltalake(str(options.out / name), table)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": time.monotonic() - started,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "checked": {
            "bronze": raw.height,
            "silver": silver.height,
            "quarantine": quarantine.height,
            "gold_events": int(daily["events"].sum()),
        },
    }))


if __name__ == "__main__":
    main()
