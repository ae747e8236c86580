//! SQL functions every Smelter session registers over DataFusion's own.
//!
//! `date_trunc`: DataFusion truncates timestamps that carry a time zone to `hour` or `day`
//! through a calendar conversion per value, and formats an error message for each value
//! whether or not it fails. Silver timestamps are UTC, where an hour and a day are fixed
//! lengths of time, so the same result is a floor to a multiple of that length. The
//! override does exactly that for arrays of UTC timestamps and leaves everything else
//! (other zones, other granularities, scalars, time types) to DataFusion's function, which
//! also keeps the name, signature, return type, orderings and simplifications.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use arrow::datatypes::{
    ArrowTimestampType, DataType, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Registers the overrides in `ctx`.
pub fn register(ctx: &SessionContext) {
    let builtin = datafusion::functions::datetime::date_trunc();
    ctx.register_udf(ScalarUDF::new_from_impl(UtcDateTrunc { builtin }));
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

    #[test]
    fn same_results_as_datafusion() {
        let builtin = datafusion::functions::datetime::date_trunc();
        let ours = ScalarUDF::new_from_impl(UtcDateTrunc {
            builtin: builtin.clone(),
        });
        // Around the epoch (negative values floor downwards), a leap day, nulls.
        let seconds: Vec<Option<i64>> = vec![
            Some(-90_061),
            Some(-1),
            Some(0),
            Some(1),
            None,
            Some(1_709_164_799),
            Some(1_709_251_199),
            Some(1_795_212_345),
        ];
        let scaled = |k: i64| -> Vec<Option<i64>> {
            seconds.iter().map(|s| s.map(|s| s * k + k / 3)).collect()
        };
        for tz in ["UTC", "+00:00", "Europe/Berlin"] {
            let arrays: Vec<ArrayRef> = vec![
                Arc::new(TimestampSecondArray::from(scaled(1)).with_timezone(tz)),
                Arc::new(TimestampMillisecondArray::from(scaled(1_000)).with_timezone(tz)),
                Arc::new(TimestampMicrosecondArray::from(scaled(1_000_000)).with_timezone(tz)),
                Arc::new(TimestampNanosecondArray::from(scaled(1_000_000_000)).with_timezone(tz)),
            ];
            for array in arrays {
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
}
