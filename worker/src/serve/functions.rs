//! SQL functions every Smelter session registers over DataFusion's own.
//!
//! `date_trunc`: DataFusion truncates timestamps that carry a time zone to `hour` or `day`
//! through a calendar conversion per value, and formats an error message for each value
//! whether or not it fails. Silver timestamps are UTC, where an hour and a day are fixed
//! lengths of time, so the same result is a floor to a multiple of that length. The
//! override does exactly that for arrays of UTC timestamps and leaves everything else
//! (other zones, other granularities, scalars, time types) to DataFusion's function, which
//! also keeps the name, signature, return type, orderings and simplifications.
//!
//! `CAST(ts AS DATE)`: Arrow casts each timestamp to a date through a calendar conversion
//! (a zone lookup and a `chrono` date per value), the costliest step of a daily gold query's
//! grouping. For timestamps without a zone or in UTC the date is the floor of the
//! timestamp over the length of a day. A rewrite replaces such casts, before planning, by
//! [`UtcDate`], which computes exactly that and falls back to Arrow's cast for values
//! outside the calendar's range (so that they fail the same way). Other zones keep the cast.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, PrimitiveArray};
use arrow::datatypes::{
    ArrowTimestampType, DataType, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::registry::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExprSchemable, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers the overrides in `ctx`.
pub fn register(ctx: &SessionContext) {
    let builtin = datafusion::functions::datetime::date_trunc();
    ctx.register_udf(ScalarUDF::new_from_impl(UtcDateTrunc { builtin }));
    let rewrite = Arc::new(UtcDateCasts {
        utc_date: Arc::new(ScalarUDF::new_from_impl(UtcDate::default())),
    });
    // Infallible: the session state only records the rewrite.
    let _ = ctx.state_ref().write().register_function_rewrite(rewrite);
}

/// `date_trunc` with arithmetic truncation of UTC timestamps to hours and days.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcDateTrunc {
    builtin: Arc<ScalarUDF>,
}

/// Whether a timestamp's zone is UTC (or a zero offset).
fn is_utc(tz: &str) -> bool {
    tz.eq_ignore_ascii_case("utc") || matches!(tz, "+00:00" | "+0000" | "Z" | "Etc/UTC")
}

/// The length of an hour or a day in `unit`, for the granularities truncated here.
fn step(granularity: &str, unit: TimeUnit) -> Option<i64> {
    let seconds = match granularity.to_ascii_lowercase().as_str() {
        "hour" => 3_600,
        "day" => 86_400,
        _ => return None,
    };
    Some(
        seconds
            * match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            },
    )
}

fn floor<T: ArrowTimestampType>(array: &ArrayRef, step: i64, tz: &Arc<str>) -> ArrayRef {
    let values: &PrimitiveArray<T> = array.as_primitive();
    let floored: PrimitiveArray<T> = values.unary(|v| v - v.rem_euclid(step));
    Arc::new(floored.with_timezone(Arc::clone(tz)))
}

/// The truncated array, when this is a case the override handles.
fn truncate_utc(args: &[ColumnarValue]) -> Option<ArrayRef> {
    let [
        ColumnarValue::Scalar(granularity),
        ColumnarValue::Array(array),
    ] = args
    else {
        return None;
    };
    let granularity = match granularity {
        ScalarValue::Utf8(Some(g)) | ScalarValue::Utf8View(Some(g)) => g,
        ScalarValue::LargeUtf8(Some(g)) => g,
        _ => return None,
    };
    let DataType::Timestamp(unit, Some(tz)) = array.data_type() else {
        return None;
    };
    if !is_utc(tz) {
        return None;
    }
    let step = step(granularity, *unit)?;
    Some(match unit {
        TimeUnit::Second => floor::<TimestampSecondType>(array, step, tz),
        TimeUnit::Millisecond => floor::<TimestampMillisecondType>(array, step, tz),
        TimeUnit::Microsecond => floor::<TimestampMicrosecondType>(array, step, tz),
        TimeUnit::Nanosecond => floor::<TimestampNanosecondType>(array, step, tz),
    })
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn name(&self) -> &str {
        self.builtin.name()
    }

    fn aliases(&self) -> &[String] {
        self.builtin.aliases()
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.builtin.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match truncate_utc(&args.args) {
            Some(array) => Ok(ColumnarValue::Array(array)),
            None => self.builtin.invoke_with_args(args),
        }
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.builtin.simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.builtin.preimage(args, lit_expr, info)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.builtin.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.builtin.preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.builtin.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.builtin.documentation()
    }
}

/// The date of a timestamp without a zone or in UTC: what `CAST(ts AS DATE)` gives.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcDate {
    signature: Signature,
}

impl Default for UtcDate {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// Days since the epoch of `chrono`'s first and last dates: Arrow's cast fails outside them.
fn day_range() -> std::ops::RangeInclusive<i64> {
    let epoch = chrono::NaiveDate::default();
    let first = chrono::NaiveDate::MIN
        .signed_duration_since(epoch)
        .num_days();
    let last = chrono::NaiveDate::MAX
        .signed_duration_since(epoch)
        .num_days();
    first..=last
}

fn days<T: ArrowTimestampType>(array: &ArrayRef, per_day: i64) -> Option<ArrayRef> {
    let range = day_range();
    let values: &PrimitiveArray<T> = array.as_primitive();
    let dates: Date32Array = values
        .try_unary(|v| {
            let day = v.div_euclid(per_day);
            if range.contains(&day) {
                Ok(day as i32)
            } else {
                Err(())
            }
        })
        .ok()?;
    Some(Arc::new(dates))
}

impl ScalarUDFImpl for UtcDate {
    fn name(&self) -> &str {
        "utc_date"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return datafusion::common::exec_err!("utc_date takes one argument");
        };
        let ColumnarValue::Array(array) = value else {
            return value.cast_to(&DataType::Date32, None);
        };
        let per_day = match array.data_type() {
            DataType::Timestamp(unit, _) => step("day", *unit),
            _ => None,
        };
        let dates = per_day.and_then(|per_day| match array.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => days::<TimestampSecondType>(array, per_day),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                days::<TimestampMillisecondType>(array, per_day)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                days::<TimestampMicrosecondType>(array, per_day)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                days::<TimestampNanosecondType>(array, per_day)
            }
            _ => None,
        });
        match dates {
            Some(dates) => Ok(ColumnarValue::Array(dates)),
            None => Ok(ColumnarValue::Array(arrow::compute::cast(
                array,
                &DataType::Date32,
            )?)),
        }
    }
}

/// Replaces `CAST(x AS DATE)` of a timestamp without a zone or in UTC by [`UtcDate`].
#[derive(Debug)]
struct UtcDateCasts {
    utc_date: Arc<ScalarUDF>,
}

impl FunctionRewrite for UtcDateCasts {
    fn name(&self) -> &str {
        "utc_date_casts"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> Result<Transformed<Expr>> {
        let Expr::Cast(Cast { expr: inner, field }) = &expr else {
            return Ok(Transformed::no(expr));
        };
        let utc_timestamp = match inner.get_type(schema) {
            Ok(DataType::Timestamp(_, None)) => true,
            Ok(DataType::Timestamp(_, Some(tz))) => is_utc(&tz),
            _ => false,
        };
        if field.data_type() != &DataType::Date32 || !utc_timestamp {
            return Ok(Transformed::no(expr));
        }
        Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(self.utc_date.clone(), vec![inner.as_ref().clone()]),
        )))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray,
    };
    use arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    use super::*;

    fn call(udf: &ScalarUDF, granularity: &str, array: ArrayRef) -> ArrayRef {
        let args = vec![
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(granularity.into()))),
            ColumnarValue::Array(array.clone()),
        ];
        let arg_fields = vec![
            Arc::new(Field::new("g", DataType::Utf8, false)),
            Arc::new(Field::new("t", array.data_type().clone(), true)),
        ];
        let return_field = Arc::new(Field::new("out", array.data_type().clone(), true));
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: array.len(),
                return_field,
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        out.into_array(array.len()).unwrap()
    }

    /// The same instants in each time unit, in zone `tz`: around the epoch (negative
    /// values floor downwards), either side of midnight before a leap day, nulls.
    fn instants(tz: Option<&str>) -> Vec<ArrayRef> {
        let seconds: Vec<Option<i64>> = vec![
            Some(-90_061),
            Some(-86_400),
            Some(-1),
            Some(0),
            Some(1),
            None,
            Some(1_709_164_799),
            Some(1_709_251_199),
            Some(1_709_251_200),
            Some(1_795_212_345),
        ];
        let scaled = |k: i64| -> Vec<Option<i64>> {
            seconds.iter().map(|s| s.map(|s| s * k + k / 3)).collect()
        };
        vec![
            Arc::new(TimestampSecondArray::from(scaled(1)).with_timezone_opt(tz)),
            Arc::new(TimestampMillisecondArray::from(scaled(1_000)).with_timezone_opt(tz)),
            Arc::new(TimestampMicrosecondArray::from(scaled(1_000_000)).with_timezone_opt(tz)),
            Arc::new(TimestampNanosecondArray::from(scaled(1_000_000_000)).with_timezone_opt(tz)),
        ]
    }

    #[test]
    fn same_results_as_datafusion() {
        let builtin = datafusion::functions::datetime::date_trunc();
        let ours = ScalarUDF::new_from_impl(UtcDateTrunc {
            builtin: builtin.clone(),
        });
        for tz in ["UTC", "+00:00", "Europe/Berlin"] {
            for array in instants(Some(tz)) {
                for granularity in ["hour", "DAY", "minute", "month"] {
                    assert_eq!(
                        call(&ours, granularity, array.clone()).as_ref(),
                        call(&builtin, granularity, array.clone()).as_ref(),
                        "{granularity} of {:?}",
                        array.data_type()
                    );
                }
            }
        }
        assert!(
            truncate_utc(&[
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("hour".into()))),
                ColumnarValue::Array(Arc::new(
                    TimestampMicrosecondArray::from(vec![1]).with_timezone("UTC")
                )),
            ])
            .is_some()
        );
    }

    fn utc_date(array: ArrayRef) -> Result<ArrayRef> {
        let n = array.len();
        let out =
            ScalarUDF::new_from_impl(UtcDate::default()).invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(array.clone())],
                arg_fields: vec![Arc::new(Field::new("t", array.data_type().clone(), true))],
                number_rows: n,
                return_field: Arc::new(Field::new("out", DataType::Date32, true)),
                config_options: Arc::new(ConfigOptions::default()),
            })?;
        out.into_array(n)
    }

    #[test]
    fn utc_dates_equal_arrows_cast() {
        for tz in [None, Some("UTC"), Some("+00:00")] {
            for array in instants(tz) {
                let expected = arrow::compute::cast(&array, &DataType::Date32).unwrap();
                assert_eq!(
                    utc_date(array.clone()).unwrap().as_ref(),
                    expected.as_ref(),
                    "{:?}",
                    array.data_type()
                );
            }
        }
        // Beyond the calendar, both fail.
        let far: ArrayRef = Arc::new(TimestampSecondArray::from(vec![i64::MAX / 2]));
        assert!(arrow::compute::cast(&far, &DataType::Date32).is_err());
        assert!(utc_date(far).is_err());
    }

    /// `CAST(.. AS DATE)` of UTC and zone-less timestamps runs as `utc_date`, other zones
    /// keep the cast; names and results are what DataFusion alone gives.
    #[tokio::test]
    async fn casts_to_date_are_rewritten_for_utc_only() {
        let values = vec![Some(-90_061_000_000), Some(1_709_164_799_000_000), None];
        let column = |tz: Option<&str>| -> ArrayRef {
            let array = TimestampMicrosecondArray::from(values.clone());
            Arc::new(match tz {
                Some(tz) => array.with_timezone(tz),
                None => array,
            })
        };
        let batch = arrow::array::RecordBatch::try_from_iter(vec![
            ("utc", column(Some("UTC"))),
            ("berlin", column(Some("Europe/Berlin"))),
            ("naive", column(None)),
        ])
        .unwrap();
        let sql = "SELECT CAST(utc AS DATE), CAST(berlin AS DATE) AS b, \
                   CAST(naive AS DATE) AS n FROM t";
        let run = |ours: bool| {
            let batch = batch.clone();
            async move {
                let ctx = SessionContext::new();
                if ours {
                    register(&ctx);
                }
                ctx.register_batch("t", batch).unwrap();
                let frame = ctx.sql(sql).await.unwrap();
                let plan = frame.clone().create_physical_plan().await.unwrap();
                let text = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(true)
                    .to_string();
                (frame.collect().await.unwrap(), text)
            }
        };
        let (ours, plan) = run(true).await;
        let (theirs, _) = run(false).await;
        assert_eq!(ours, theirs);
        assert!(plan.contains("utc_date(utc@0)"), "{plan}");
        assert!(plan.contains("utc_date(naive@2)"), "{plan}");
        assert!(plan.contains("CAST(berlin@1 AS Date32)"), "{plan}");
        assert!(!plan.contains("CAST(utc"), "{plan}");
    }
}
