//! A setting that is a value or `"auto"`: how OpenAI's fine-tuning API writes a
//! hyper-parameter the service chooses (`"n_epochs": "auto"`) next to one the caller set
//! (`"n_epochs": 3`). `None` is `"auto"`, in requests and in answers alike.

use serde::{Serialize, Serializer};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        RefOr, Type,
        schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema},
    },
};

/// The word that leaves a setting to the service.
pub const AUTO: &str = "auto";

/// An integer, or `"auto"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoInteger(pub Option<u64>);

/// A number, or `"auto"`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AutoNumber(pub Option<f64>);

/// A list of module names, or `"auto"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoModules(pub Option<Vec<String>>);

fn serialize_auto<S: Serializer, T: Serialize>(value: Option<&T>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => value.serialize(serializer),
        None => serializer.serialize_str(AUTO),
    }
}

impl Serialize for AutoInteger {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_auto(self.0.as_ref(), serializer)
    }
}

impl Serialize for AutoNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_auto(self.0.as_ref(), serializer)
    }
}

impl Serialize for AutoModules {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_auto(self.0.as_ref(), serializer)
    }
}

fn auto_word() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some([AUTO]))
}

fn one_of(value: impl Into<RefOr<Schema>>, description: &str) -> RefOr<Schema> {
    OneOfBuilder::new().item(value).item(auto_word()).description(Some(description)).into()
}

impl PartialSchema for AutoInteger {
    fn schema() -> RefOr<Schema> {
        one_of(
            ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)),
            "An integer, or \"auto\" for the service's choice (from the data size)",
        )
    }
}

impl ToSchema for AutoInteger {}

impl PartialSchema for AutoNumber {
    fn schema() -> RefOr<Schema> {
        one_of(
            ObjectBuilder::new().schema_type(Type::Number),
            "A number, or \"auto\" for the service's choice (from the data size)",
        )
    }
}

impl ToSchema for AutoNumber {}

impl PartialSchema for AutoModules {
    fn schema() -> RefOr<Schema> {
        one_of(
            ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)),
            "Module names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or [\"all-linear\"]), \
             or \"auto\" for the service's choice",
        )
    }
}

impl ToSchema for AutoModules {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_settings_read_auto_and_set_ones_their_value() {
        assert_eq!(serde_json::to_value(AutoInteger(None)).expect("json"), serde_json::json!("auto"));
        assert_eq!(serde_json::to_value(AutoInteger(Some(3))).expect("json"), serde_json::json!(3));
        assert_eq!(serde_json::to_value(AutoNumber(Some(0.5))).expect("json"), serde_json::json!(0.5));
        assert_eq!(
            serde_json::to_value(AutoModules(Some(vec!["q_proj".into()]))).expect("json"),
            serde_json::json!(["q_proj"])
        );
        assert_eq!(serde_json::to_value(AutoModules(None)).expect("json"), serde_json::json!("auto"));
    }
}
