//! Enforcement of proto2 `required` fields.
//!
//! prost decodes a message with a missing `required` field into a default value, silently.
//! CRIU (protobuf-c) refuses such a message, and so must we. Rather than decode each entry a
//! second time into a `DynamicMessage`, this module turns the schema's descriptors into a
//! *plan* per message type (its fields sorted by number, which are required, which are
//! sub-messages) once, then checks an entry by walking its wire tags: one pass, no allocation
//! unless a field is missing (the error then spells the field's path, `thread_info.gpregs.ip`).

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_reflect::{Cardinality, DescriptorPool, Kind};

use crate::wire::{self, Value, WireError};

/// Deepest message nesting we follow (CRIU's schema nests at most 5 levels).
const MAX_DEPTH: usize = 32;

/// Why a message failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    /// The message type is not in the schema.
    #[error("message type {0} is not in the schema")]
    UnknownMessage(String),
    /// The bytes are not valid protobuf.
    #[error("malformed protobuf in {message}: {error}")]
    Wire { message: String, error: WireError },
    /// A sub-message field was not encoded as length-delimited.
    #[error("field {field} of {message} has the wrong wire type")]
    WireType { message: String, field: String },
    /// A required field is absent; `field` is its dotted path from the entry's message.
    #[error("required field {field} of {message} is missing")]
    MissingRequired { message: String, field: String },
    /// Messages nested deeper than we follow.
    #[error("message {message} nests deeper than {MAX_DEPTH} levels")]
    TooDeep { message: String },
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    name: String,
    /// Bit in the required mask, for required fields.
    required_bit: Option<u32>,
    /// Plan index of the sub-message type.
    child: Option<usize>,
    repeated: bool,
}

#[derive(Debug)]
struct Plan {
    name: String,
    fields: Vec<FieldPlan>,
    /// Position in `fields` by field number, for numbers below `DENSE_LIMIT` (CRIU's field
    /// numbers are small); `NO_FIELD` for unknown numbers. Larger numbers fall back to a
    /// binary search of `fields`.
    by_number: Vec<u16>,
    required_mask: u128,
}

const DENSE_LIMIT: u32 = 256;
const NO_FIELD: u16 = u16::MAX;

impl Plan {
    fn position(&self, number: u32) -> Option<usize> {
        match self.by_number.get(number as usize) {
            Some(&NO_FIELD) => None,
            Some(&pos) => Some(usize::from(pos)),
            None => self.fields.binary_search_by_key(&number, |f| f.number).ok(),
        }
    }
}

#[derive(Debug)]
struct Plans {
    by_name: HashMap<String, usize>,
    plans: Vec<Plan>,
}

impl Plans {
    fn build(pool: &DescriptorPool) -> Plans {
        let messages: Vec<_> = pool.all_messages().collect();
        let by_name: HashMap<String, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.full_name().to_owned(), i))
            .collect();
        let plans = messages
            .iter()
            .map(|m| {
                let mut fields: Vec<FieldPlan> = m
                    .fields()
                    .map(|f| FieldPlan {
                        number: f.number(),
                        name: f.name().to_owned(),
                        required_bit: None,
                        repeated: f.cardinality() == Cardinality::Repeated,
                        child: match f.kind() {
                            Kind::Message(sub) => by_name.get(sub.full_name()).copied(),
                            _ => None,
                        },
                    })
                    .collect();
                fields.sort_by_key(|f| f.number);
                let mut required_mask = 0u128;
                let mut bit = 0u32;
                for (plan, desc) in fields.iter_mut().filter_map(|p| {
                    let d = m.get_field(p.number)?;
                    Some((p, d))
                }) {
                    // TODO: a message with more than 128 required fields would go unchecked
                    // beyond the 128th; CRIU's largest has 27.
                    if desc.cardinality() == Cardinality::Required && bit < 128 {
                        plan.required_bit = Some(bit);
                        required_mask |= 1 << bit;
                        bit += 1;
                    }
                }
                let dense = fields
                    .iter()
                    .map(|f| f.number + 1)
                    .filter(|&n| n <= DENSE_LIMIT)
                    .max()
                    .unwrap_or(0);
                let mut by_number = vec![NO_FIELD; dense as usize];
                for (pos, f) in fields.iter().enumerate() {
                    if let Some(slot) = by_number.get_mut(f.number as usize) {
                        *slot = u16::try_from(pos).unwrap_or(NO_FIELD);
                    }
                }
                Plan {
                    name: m.full_name().to_owned(),
                    fields,
                    by_number,
                    required_mask,
                }
            })
            .collect();
        Plans { by_name, plans }
    }
}

fn plans() -> &'static Plans {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    PLANS.get_or_init(|| Plans::build(crate::schema::descriptor_pool()))
}

/// Checks that `payload`, an encoded `message` (full name, `criu.core_entry`), is well-formed
/// and has every required field, recursively.
pub fn check_required(message: &str, payload: &[u8]) -> Result<(), ValidateError> {
    let plans = plans();
    let &index = plans
        .by_name
        .get(message)
        .ok_or_else(|| ValidateError::UnknownMessage(message.to_owned()))?;
    check(plans, index, payload, 0)
}

/// Whether the schema knows `message`.
pub fn knows(message: &str) -> bool {
    plans().by_name.contains_key(message)
}

fn check(plans: &Plans, index: usize, payload: &[u8], depth: usize) -> Result<(), ValidateError> {
    let plan = &plans.plans[index];
    if depth > MAX_DEPTH {
        return Err(ValidateError::TooDeep {
            message: plan.name.clone(),
        });
    }

    let mut seen = 0u128;
    let mut occurrence: usize = 0;
    let mut last_number = 0u32;
    for field in wire::fields(payload) {
        let field = field.map_err(|error| ValidateError::Wire {
            message: plan.name.clone(),
            error,
        })?;
        occurrence = if field.number == last_number {
            occurrence + 1
        } else {
            0
        };
        last_number = field.number;
        let Some(pos) = plan.position(field.number) else {
            continue; // unknown field: kept by byte-level tools, ignored here
        };
        let fp = &plan.fields[pos];
        if let Some(bit) = fp.required_bit {
            seen |= 1 << bit;
        }
        if let Some(child) = fp.child {
            let Value::Len(sub) = field.value else {
                return Err(ValidateError::WireType {
                    message: plan.name.clone(),
                    field: fp.name.clone(),
                });
            };
            let index = fp.repeated.then_some(occurrence);
            check(plans, child, sub, depth + 1).map_err(|e| prefix(e, &fp.name, index))?;
        }
    }

    let missing = plan.required_mask & !seen;
    if missing != 0 {
        let bit = missing.trailing_zeros();
        let field = plan
            .fields
            .iter()
            .find(|f| f.required_bit == Some(bit))
            .map(|f| f.name.clone())
            .unwrap_or_default();
        return Err(ValidateError::MissingRequired {
            message: plan.name.clone(),
            field,
        });
    }
    Ok(())
}

/// Puts the parent field's name (and index, for repeated fields) in front of a nested
/// error's field path. The message is blanked; `finish` names the outermost one.
///
/// The index counts consecutive occurrences, which is exact for writers that emit fields in
/// number order (CRIU, prost, cryo).
fn prefix(err: ValidateError, parent: &str, index: Option<usize>) -> ValidateError {
    let parent = match index {
        Some(i) => format!("{parent}[{i}]"),
        None => parent.to_owned(),
    };
    match err {
        ValidateError::MissingRequired { field, .. } => ValidateError::MissingRequired {
            message: String::new(),
            field: format!("{parent}.{field}"),
        },
        ValidateError::WireType { field, .. } => ValidateError::WireType {
            message: String::new(),
            field: format!("{parent}.{field}"),
        },
        other => other,
    }
}

/// Fills in the outermost message name after `prefix` blanked it.
pub(crate) fn finish(err: ValidateError, message: &str) -> ValidateError {
    match err {
        ValidateError::MissingRequired { message: m, field } if m.is_empty() => {
            ValidateError::MissingRequired {
                message: message.to_owned(),
                field,
            }
        }
        ValidateError::WireType { message: m, field } if m.is_empty() => ValidateError::WireType {
            message: message.to_owned(),
            field,
        },
        other => other,
    }
}

/// Checks required fields, naming the entry's own message in errors about nested fields.
pub fn check_entry(message: &str, payload: &[u8]) -> Result<(), ValidateError> {
    check_required(message, payload).map_err(|e| finish(e, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magic::MAGICS;

    #[test]
    fn the_schema_knows_every_message_of_the_magic_table() {
        let missing: Vec<_> = MAGICS
            .iter()
            .filter_map(|m| m.message)
            .chain(["criu.pagemap_head", "criu.ghost_chunk_entry"])
            .filter(|name| !knows(name))
            .collect();
        assert!(missing.is_empty(), "not in the schema: {missing:?}");
    }
}
