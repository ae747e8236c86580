use super::*;

const DEMO: &str = include_str!("../../../examples/clickstream.yaml");

fn spec_error(text: &str) -> (String, Option<usize>, String) {
    match PipelineSpec::parse(text, "p.yaml") {
        Err(Error::Spec {
            field,
            line,
            message,
            ..
        }) => (field, line, message),
        other => panic!("expected a spec error, got {other:?}"),
    }
}

#[test]
fn demo_spec_parses() {
    let spec = PipelineSpec::parse(DEMO, "clickstream.yaml").unwrap();
    assert_eq!(spec.pipeline, "clickstream");
    assert_eq!(spec.tables_in(Layer::Gold).count(), 3);
    let silver = &spec.tables["silver.events"];
    let columns: Vec<String> = validate::silver_columns(silver)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        columns.contains(&"user_id".to_string()) && columns.contains(&"product_price".to_string())
    );
    assert_eq!(
        silver.dedupe.as_ref().unwrap().within,
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn type_errors_name_field_and_line() {
    let text = DEMO.replace(
        "dedupe: { keys: [event_id], within: 1h }",
        "dedupe: { keys: event_id, within: 1h }",
    );
    let (field, line, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.dedupe.keys");
    assert!(message.contains("expected a sequence"), "{message}");
    assert_eq!(
        line,
        text.lines()
            .position(|l| l.contains("dedupe:"))
            .map(|i| i + 1)
    );
}

#[test]
fn unknown_fields_are_rejected() {
    let text = DEMO.replace("flatten: true", "flaten: true");
    let (field, _, message) = spec_error(&text);
    assert!(field.starts_with("tables.silver.events"), "{field}");
    assert!(message.contains("flaten"), "{message}");
}

#[test]
fn semantic_errors_name_field() {
    let text = DEMO.replace("keys: [event_id]", "keys: [event_uuid]");
    let (field, line, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.dedupe.keys");
    assert!(message.contains("event_uuid"), "{message}");
    assert!(line.is_some());

    let text = DEMO.replace("from: bronze.events", "from: bronze.clicks");
    let (field, _, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.from");
    assert!(message.contains("bronze.clicks"), "{message}");

    let text = DEMO.replace("rate: 2000 ", "rate: 0 ");
    assert_eq!(spec_error(&text).0, "sources.events.generator.rate");

    let text = DEMO.replace("within: 1h", "within: 1 hour");
    let (field, _, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.dedupe.within");
    assert!(message.contains("invalid duration"), "{message}");

    let text = DEMO.replace("on_violation: quarantine }", "on_violation: explode }");
    assert!(
        spec_error(&text)
            .0
            .starts_with("tables.silver.events.expectations")
    );

    let text = DEMO.replace("ts: timestamp", "ts: timestamptz");
    let (_, _, message) = spec_error(&text);
    assert!(
        message.contains("ts: unknown type `timestamptz`"),
        "{message}"
    );

    // An unquoted decimal inside a `{ }` mapping is split at its comma: the error says so.
    let text = DEMO.replace("\"decimal(10,2)\"", "decimal(10,2)");
    let (_, _, message) = spec_error(&text);
    assert!(
        message.contains("unknown type `decimal(10`") && message.contains("quote it"),
        "{message}"
    );
    for bad in [
        "decimal(0,0)",
        "decimal(39,2)",
        "decimal(4,5)",
        "decimal(10)",
    ] {
        let text = DEMO.replace("decimal(10,2)", bad);
        let (_, _, message) = spec_error(&text);
        assert!(message.contains("precision 1 to 38"), "{bad}: {message}");
    }
}

#[test]
fn decimals_parse_with_precision_and_scale() {
    let spec = PipelineSpec::parse(DEMO, "demo.yaml").unwrap();
    let parse = spec.tables["silver.events"].parse.as_ref().unwrap();
    let FieldType::Struct(product) = &parse.schema.declared().unwrap().fields["product"] else {
        panic!("product is a struct");
    };
    assert_eq!(
        product.fields["price"],
        FieldType::Primitive(Primitive::Decimal {
            precision: 10,
            scale: 2
        })
    );
    let text = DEMO.replace("\"decimal(10,2)\"", "\"numeric( 12 , 4 )\"");
    let spec = PipelineSpec::parse(&text, "demo.yaml").unwrap();
    let FieldType::Struct(product) = &spec.tables["silver.events"]
        .parse
        .as_ref()
        .unwrap()
        .schema
        .declared()
        .unwrap()
        .fields["product"]
    else {
        panic!("product is a struct");
    };
    assert_eq!(
        product.fields["price"],
        FieldType::Primitive(Primitive::Decimal {
            precision: 12,
            scale: 4
        })
    );
}

#[test]
fn layer_rules_are_enforced() {
    let text = DEMO.replace(
        "  gold.user_segments:\n    from: silver.events\n",
        "  gold.user_segments:\n    from: bronze.events\n",
    );
    assert_eq!(spec_error(&text).0, "tables.gold.user_segments.from");
    let text = DEMO.replace(
        "  bronze.events:\n    from: events\n",
        "  bronze.events:\n    from: events\n    flatten: true\n",
    );
    assert_eq!(spec_error(&text).0, "tables.bronze.events.flatten");
    let text = DEMO.replace("  bronze.events:", "  platinum.events:");
    assert_eq!(spec_error(&text).0, "tables.platinum.events");
}

#[test]
fn error_display_names_file_line_and_field() {
    let text = DEMO.replace("keys: [event_id]", "keys: [nope]");
    let err = PipelineSpec::parse(&text, "pipelines/x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("pipelines/x.yaml:"), "{err}");
    assert!(
        err.contains("tables.silver.events.dedupe.keys: unknown column `nope`"),
        "{err}"
    );
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(parse_duration("h"), None);
    assert_eq!(parse_duration("3 weeks"), None);
}

fn kafka_source(body: &str) -> String {
    let start = DEMO.find("  events:\n    generator:").unwrap();
    let end = DEMO.find("\ntables:").unwrap();
    format!(
        "{}  events:\n    kafka:\n{body}{}",
        &DEMO[..start],
        &DEMO[end..]
    )
}

#[test]
fn kafka_sources_parse_and_have_no_static_partitions() {
    let text = kafka_source(
        "      brokers: \"k1:9092,k2:9092\"\n      topic: clicks\n      properties: { fetch.max.bytes: \"1048576\" }\n",
    );
    let spec = PipelineSpec::parse(&text, "p.yaml").unwrap();
    let SourceSpec::Kafka(kafka) = &spec.sources["events"] else {
        panic!("a kafka source");
    };
    assert_eq!(kafka.topic, "clicks");
    assert_eq!(spec.sources["events"].partitions(), None);
}

#[test]
fn bad_kafka_sources_are_rejected_with_their_field() {
    for (body, field, needle) in [
        (
            "      brokers: \"k1\"\n      topic: clicks\n",
            "sources.events.kafka.brokers",
            "host:port",
        ),
        (
            "      brokers: \"k1:9092\"\n      topic: \"bad topic\"\n",
            "sources.events.kafka.topic",
            "not a Kafka topic name",
        ),
        (
            "      brokers: \"k1:9092\"\n      topic: clicks\n      properties: { group.id: mine }\n",
            "sources.events.kafka.properties.group.id",
            "set by Smelter",
        ),
    ] {
        let (found, _, message) = spec_error(&kafka_source(body));
        assert_eq!(found, field, "{message}");
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn table_checks_parse_and_bad_ones_name_their_field() {
    let spec = PipelineSpec::parse(DEMO, "clickstream.yaml").unwrap();
    let checks = &spec.tables["silver.events"].checks;
    assert_eq!(checks.unique, ["event_id"]);
    assert_eq!(checks.freshness_sla, Some(Duration::from_secs(300)));
    assert_eq!(checks.range["quantity"].max, Some(100.0));
    assert!(checks.on_rows());
    assert!(!spec.tables["bronze.events"].checks.on_rows());

    let text = DEMO.replace("unique: [event_id]", "unique: [event_uuid]");
    let (field, line, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.checks.unique");
    assert!(
        message.contains("event_uuid") && line.is_some(),
        "{message}"
    );
    let text = DEMO.replace("user_id: 0.0,", "user_id: 1.5,");
    let (field, _, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.checks.max_null_fraction");
    assert!(message.contains("between 0 and 1"), "{message}");
    let text = DEMO.replace("{ min: 1, max: 100 }", "{ min: 5, max: 1 }");
    assert!(spec_error(&text).2.contains("min 5 is above max 1"));
    let text = DEMO.replace("{ min: 1, max: 100 }", "{}");
    assert_eq!(spec_error(&text).0, "tables.silver.events.checks.range");
    let text = DEMO.replace("freshness_sla: 5m", "freshness_sla: 0s");
    assert_eq!(
        spec_error(&text).0,
        "tables.silver.events.checks.freshness_sla"
    );
    let text = DEMO.replace(
        "  bronze.events:\n    from: events\n",
        "  bronze.events:\n    from: events\n    checks: { unique: [value] }\n",
    );
    let (field, _, message) = spec_error(&text);
    assert_eq!(field, "tables.bronze.events.checks");
    assert!(message.contains("only `freshness_sla`"), "{message}");
}

#[test]
fn column_descriptions_name_columns_the_table_has() {
    let text = DEMO.replace(
        "      user_id: The signed-in user",
        "      usr_id: The signed-in user",
    );
    let (field, _, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.column_descriptions.usr_id");
    assert!(message.contains("unknown column `usr_id`"), "{message}");
    let text = DEMO.replace(
        "      event_id: The producer's id of the event; unique in this table.",
        "      event_id: \"  \"",
    );
    assert_eq!(
        spec_error(&text).0,
        "tables.silver.events.column_descriptions.event_id"
    );
    // Metadata columns are the table's too.
    let text = DEMO.replace(
        "      event_id: The producer's id",
        "      _offset: Where the record was in its source.\n      event_id: The producer's id",
    );
    PipelineSpec::parse(&text, "x.yaml").unwrap();
}

#[test]
fn retention_windows_and_columns_are_checked() {
    let with = |retention: &str| {
        DEMO.replace(
            "    description: Parsed, validated, deduplicated events.\n",
            &format!("    description: Parsed, validated, deduplicated events.\n    retention: {retention}\n"),
        )
    };
    let spec = PipelineSpec::parse(
        &with("{ data: 90d, column: ts, history: 30d, vacuum_after: 7d }"),
        "x.yaml",
    )
    .unwrap();
    let retention = &spec.tables["silver.events"].retention;
    assert_eq!(retention.data, Some(Duration::from_secs(90 * 86_400)));
    assert_eq!(retention.data_column(Layer::Silver), Some("ts"));
    let (field, _, message) = spec_error(&with("{ data: 90d }"));
    assert_eq!(field, "tables.silver.events.retention.column");
    assert!(message.contains("time column"), "{message}");
    let (field, _, message) = spec_error(&with("{ data: 90d, column: when }"));
    assert_eq!(field, "tables.silver.events.retention.column");
    assert!(message.contains("unknown column `when`"), "{message}");
    assert_eq!(
        spec_error(&with("{ history: 0s }")).0,
        "tables.silver.events.retention.history"
    );
    assert_eq!(
        spec_error(&with("{ column: ts }")).0,
        "tables.silver.events.retention.column"
    );
    assert_eq!(
        spec_error(&with("{ keep: 1d }")).0,
        "tables.silver.events.retention.keep"
    );
    // Bronze measures on ingest time unless told otherwise.
    assert_eq!(
        RetentionSpec::default().data_column(Layer::Bronze),
        Some("ingested_at")
    );
}

/// A change stream merged into silver, with `merge` set to `merge_yaml`.
fn cdc_spec(merge_yaml: &str, extra: &str) -> String {
    format!(
        "pipeline: users\nsources:\n  cdc: {{ files: {{ path: /tmp/in }} }}\ntables:\n  bronze.cdc: {{ from: cdc }}\n  silver.users:\n    from: bronze.cdc\n    parse: {{ format: debezium, schema: {{ id: long, tier: string }} }}\n    merge: {merge_yaml}\n{extra}"
    )
}

#[test]
fn merges_parse_and_bad_ones_name_their_field() {
    let spec = PipelineSpec::parse(
        &cdc_spec(
            "{ keys: [id], sequence_by: _lsn }",
            "    change_data_feed: true\n",
        ),
        "p.yaml",
    )
    .unwrap();
    let silver = &spec.tables["silver.users"];
    let merge = silver.merge.as_ref().unwrap();
    assert_eq!((merge.scd, silver.change_data_feed), (1, true));
    assert_eq!(
        merge.delete_predicate(PayloadFormat::Debezium).as_deref(),
        Some("_op = 'd'"),
        "Debezium deletes by default"
    );
    let columns: Vec<String> = validate::silver_columns(silver)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(columns.contains(&"_lsn".to_string()) && columns.contains(&"_op".to_string()));
    for (merge, extra, field, needle) in [
        (
            "{ keys: [], sequence_by: _lsn }",
            "",
            "merge.keys",
            "at least one",
        ),
        (
            "{ keys: [uid], sequence_by: _lsn }",
            "",
            "merge.keys",
            "unknown column `uid`",
        ),
        (
            "{ keys: [id], sequence_by: ts }",
            "",
            "merge.sequence_by",
            "unknown column `ts`",
        ),
        (
            "{ keys: [id], sequence_by: _lsn, scd: 3 }",
            "",
            "merge.scd",
            "SCD type 3",
        ),
        (
            "{ keys: [id], sequence_by: _lsn }",
            "    partition_by: [tier]\n",
            "partition_by",
            "not partitioned",
        ),
        (
            "{ keys: [id], sequence_by: _lsn, delete_when: ' ' }",
            "",
            "merge.delete_when",
            "empty",
        ),
    ] {
        let (found, _, message) = spec_error(&cdc_spec(merge, extra));
        assert_eq!(found, format!("tables.silver.users.{field}"), "{merge}");
        assert!(message.contains(needle), "{merge}: {message}");
    }
    let gold = DEMO.replace(
        "    sql: |\n      SELECT date_trunc('hour', ts)",
        "    change_data_feed: true\n    sql: |\n      SELECT date_trunc('hour', ts)",
    );
    assert_ne!(gold, DEMO);
    let (field, _, message) = spec_error(&gold);
    assert!(field.ends_with("change_data_feed"), "{field}");
    assert!(message.contains("does not apply to gold"), "{message}");
}

#[test]
fn joins_name_declared_tables_the_sql_reads() {
    let shop = include_str!("../../../examples/shop.yaml");
    let spec = PipelineSpec::parse(shop, "shop.yaml").unwrap();
    let gold = &spec.tables["gold.revenue_by_tier"];
    let upstreams: Vec<&String> = gold.upstreams().collect();
    assert_eq!(upstreams, ["silver.events", "silver.users"]);
    let joins = "    joins: [silver.users]\n";
    for (from, to, needle) in [
        (
            joins,
            "    joins: [silver.nope]\n",
            "unknown table `silver.nope`",
        ),
        (joins, "    joins: [bronze.users_cdc]\n", "is bronze"),
        (joins, "    joins: [silver.events]\n", "`from` or itself"),
        (
            joins,
            "    joins: [silver.users_history]\n",
            "does not read `silver.users_history`",
        ),
        (joins, "", "neither its `from` nor in its `joins`"),
    ] {
        let text = shop.replace(from, to);
        assert_ne!(text, shop);
        let (field, _, message) = spec_error(&text);
        assert!(
            field.starts_with("tables.gold.revenue_by_tier."),
            "{to}: {field}"
        );
        assert!(message.contains(needle), "{to}: {message}");
    }
}

#[test]
fn maps_and_binary_parse_and_print_back() {
    let schema: SchemaSpec =
        serde_yaml::from_str("counts: map(long)\nnested: \"map( map(string) )\"\nblob: bytes\n")
            .unwrap();
    assert_eq!(
        schema.fields["counts"],
        FieldType::Map(Box::new(FieldType::Primitive(Primitive::Long)))
    );
    assert_eq!(
        schema.fields["nested"],
        FieldType::Map(Box::new(FieldType::Map(Box::new(FieldType::Primitive(
            Primitive::String
        )))))
    );
    assert_eq!(
        schema.fields["blob"],
        FieldType::Primitive(Primitive::Binary)
    );
    assert_eq!(
        serde_yaml::to_string(&schema).unwrap(),
        "counts: map(long)\nnested: map(map(string))\nblob: binary\n"
    );
    let error = serde_yaml::from_str::<SchemaSpec>("m: map(nope)\n").unwrap_err();
    assert!(
        error.to_string().contains("m{}: unknown type `nope`"),
        "{error}"
    );
}

#[test]
fn bytes_inside_a_nested_value_are_refused() {
    let text = DEMO.replace("session_id: string", "session_id: [binary]");
    let (field, _, message) = spec_error(&text);
    assert_eq!(field, "tables.silver.events.parse.schema");
    assert!(
        message.contains("`session_id` holds `binary` inside a list"),
        "{message}"
    );
    let text = DEMO.replace("session_id: string", "session_id: binary");
    PipelineSpec::parse(&text, "p.yaml").unwrap();
}

#[test]
fn files_sources_take_prefixes_patterns_and_partitions_and_bad_ones_name_their_field() {
    let text = |files: &str| {
        format!(
            "pipeline: p\nsources:\n  landing:\n    files: {files}\ntables:\n  bronze.raw: {{ from: landing }}\n"
        )
    };
    let spec = PipelineSpec::parse(
        &text("{ path: \"s3://landing/events\", pattern: \"**/*.ndjson.gz\", partitions: 6 }"),
        "p.yaml",
    )
    .unwrap();
    assert_eq!(spec.sources["landing"].partitions(), Some(6));
    for (files, field, needle) in [
        (
            "{ path: \"gs://b/x\" }",
            "sources.landing.files.path",
            "not a supported store",
        ),
        (
            "{ path: /in, pattern: \"[a\" }",
            "sources.landing.files.pattern",
            "not a glob",
        ),
        (
            "{ path: /in, partitions: 0 }",
            "sources.landing.files.partitions",
            "between 1 and 1024",
        ),
        (
            "{ path: /in, full_listing_every: 0 }",
            "sources.landing.files.full_listing_every",
            "at least 1",
        ),
    ] {
        let (found, _, message) = spec_error(&text(files));
        assert_eq!(found, field, "{message}");
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn avro_payloads_name_an_http_registry_and_only_they_do() {
    let avro = DEMO.replace(
        "      format: json\n",
        "      format: avro\n      registry: http://registry:8081\n",
    );
    let spec = PipelineSpec::parse(&avro, "p.yaml").unwrap();
    let parse = spec.tables["silver.events"].parse.as_ref().unwrap();
    assert_eq!(parse.format, PayloadFormat::Avro);
    assert_eq!(parse.registry.as_deref(), Some("http://registry:8081"));
    // JSON records framed by a JSON Schema serializer.
    let framed = DEMO.replace(
        "      format: json\n",
        "      format: json\n      registry: http://registry:8081\n",
    );
    PipelineSpec::parse(&framed, "p.yaml").unwrap();
    for (text, wanted) in [
        (
            DEMO.replace("      format: json\n", "      format: avro\n"),
            "name their schema registry",
        ),
        (
            DEMO.replace(
                "      format: json\n",
                "      format: debezium\n      registry: http://registry:8081\n",
            ),
            "is read for `format: avro` and `format: json`",
        ),
        (
            avro.replace("http://registry:8081", "https://registry:8081"),
            "is not an http:// URL",
        ),
    ] {
        let (field, _, message) = spec_error(&text);
        assert_eq!(field, "tables.silver.events.parse.registry");
        assert!(message.contains(wanted), "{message}");
    }
}

#[test]
fn record_metadata_becomes_silver_columns_once_each() {
    let with = |list: &str| {
        DEMO.replace(
            "      format: json\n",
            &format!("      format: json\n      metadata: {list}\n"),
        )
    };
    let spec = PipelineSpec::parse(&with("[key, headers]"), "p.yaml").unwrap();
    let silver = &spec.tables["silver.events"];
    let columns: Vec<String> = validate::silver_columns(silver)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let at = columns.iter().position(|c| c == "_rescued_data").unwrap();
    assert_eq!(
        &columns[at..at + 4],
        ["_rescued_data", "_key", "_headers", "_topic"]
    );
    let (field, _, message) = spec_error(&with("[key, key]"));
    assert_eq!(field, "tables.silver.events.parse.metadata");
    assert!(message.contains("`key` is listed twice"), "{message}");
    let error = PipelineSpec::parse(&with("[offset]"), "p.yaml").unwrap_err();
    assert!(error.to_string().contains("offset"), "{error}");
}

#[test]
fn an_inferred_schema_is_declared_with_infer_and_names_what_it_cannot_have() {
    let base = "pipeline: p\nsources: { s: { generator: { partitions: 1 } } }\ntables:\n  \
                bronze.e: { from: s }\n  silver.e:\n    from: bronze.e\n    parse: PARSE\n";
    let spec = |parse: &str, extra: &str| {
        PipelineSpec::parse(&(base.replace("PARSE", parse) + extra), "p.yaml")
    };
    let parsed = spec("{ format: json, schema: infer, sample: 50 }", "").unwrap();
    let parse = parsed.tables["silver.e"].parse.as_ref().unwrap();
    assert!(parse.schema.inferred() && parse.sample == Some(50));
    assert!(parsed.tables["silver.e"].declared_columns().is_empty());
    // It writes back as it was read.
    let text = serde_yaml::to_string(&parsed).unwrap();
    assert_eq!(PipelineSpec::parse(&text, "again.yaml").unwrap(), parsed);
    for (parse, extra, field, says) in [
        (
            "{ format: json, schema: infer }",
            "    flatten: true\n",
            "flatten",
            "smelter infer",
        ),
        (
            "{ format: json, schema: infer }",
            "    dedupe: { keys: [id] }\n",
            "dedupe",
            "before records arrive",
        ),
        (
            "{ format: csv, schema: infer }",
            "",
            "parse.schema",
            "declare the schema of csv",
        ),
        (
            "{ format: json, schema: infer, sample: 0 }",
            "",
            "parse.sample",
            "at least one",
        ),
        (
            "{ format: json, schema: { id: string }, sample: 5 }",
            "",
            "parse.sample",
            "is declared",
        ),
        (
            "{ format: json, schema: informed }",
            "",
            "parse.schema",
            "or `infer`",
        ),
    ] {
        let error = spec(parse, extra).unwrap_err().to_string();
        assert!(
            error.contains(&format!("tables.silver.e.{field}")) && error.contains(says),
            "{parse} {extra}: {error}"
        );
    }
}

#[test]
fn on_incompatible_is_for_silver_tables_that_are_not_merged() {
    let text = DEMO.replace(
        "    flatten: true\n",
        "    flatten: true\n    on_incompatible: new_version\n",
    );
    let spec = PipelineSpec::parse(&text, "demo.yaml").unwrap();
    assert_eq!(
        spec.tables["silver.events"].on_incompatible,
        super::OnIncompatible::NewVersion
    );
    let text = DEMO.replace(
        "keys: [hour, event_type]",
        "keys: [hour, event_type]\n    on_incompatible: rescue",
    );
    let error = PipelineSpec::parse(&text, "demo.yaml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not apply to gold tables"), "{error}");
    let error = PipelineSpec::parse(
        &DEMO.replace(
            "    flatten: true\n",
            "    flatten: true\n    on_incompatible: sometimes\n",
        ),
        "demo.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("on_incompatible") && error.contains("new_version"),
        "{error}"
    );
}
