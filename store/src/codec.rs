//! The resource codec: a resource's etcd key, and its stored bytes both ways (the JSON
//! without resourceVersion, which is the key's mod revision instead).

use calico_schema::{Kind, Resource};

use crate::{StoreError, RESOURCES_PREFIX};

/// The etcd key of a resource.
pub fn resource_key(kind: Kind, name: &str) -> String {
    format!("{RESOURCES_PREFIX}{}/{name}", kind.key_segment())
}

pub(crate) fn id_of(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Decodes a stored resource, checking it is stored under its own key, with
/// resourceVersion set to the key's mod revision.
pub fn decode_resource(key: &str, value: &[u8], mod_revision: i64) -> Result<Resource, StoreError> {
    let invalid = |detail: String| StoreError::Invalid {
        key: key.to_string(),
        detail,
    };
    let v: serde_json::Value = serde_json::from_slice(value).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let mut r = Resource::from_json(v).map_err(|(path, msg)| {
        if path.is_empty() || path == "." {
            invalid(msg)
        } else {
            invalid(format!("{path}: {msg}"))
        }
    })?;
    let expected = resource_key(r.kind(), r.name());
    if expected != key {
        // A value copied to the wrong key would otherwise shadow or duplicate the real one.
        return Err(invalid(format!("holds {} whose key would be {expected}", r.id())));
    }
    r.metadata_mut().resource_version = Some(mod_revision.to_string());
    Ok(r)
}

/// The bytes stored for a resource: its JSON without resourceVersion, which lives in
/// etcd's mod revision instead.
pub(crate) fn encode_resource(r: &Resource) -> Vec<u8> {
    // Serializing a serde_json::Value cannot fail.
    serde_json::to_vec(&r.without_version().to_json()).unwrap_or_default()
}
