//! Plain JSON values beside the resources (status, sync state): put, get, list, delete
//! under `/calico/v1/<suffix>`.

use crate::{Store, StoreError, PREFIX};

impl Store {
    fn json_key(suffix: &str) -> String {
        format!("{PREFIX}{suffix}")
    }

    /// Stores a plain JSON value at `/calico/v1/<suffix>` (status, sync state; not
    /// resources). Returns the revision of the write.
    pub async fn put_json<T: serde::Serialize + Sync>(&self, suffix: &str, value: &T) -> Result<i64, StoreError> {
        let key = Self::json_key(suffix);
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Invalid {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        let mut resp = self
            .kv_call(|mut kv| {
                let (key, bytes) = (key.clone(), bytes.clone());
                async move { kv.put(key, bytes, None).await }
            })
            .await?;
        Ok(resp.take_header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Reads the JSON value at `/calico/v1/<suffix>`; `Invalid` when it does not decode.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, suffix: &str) -> Result<Option<T>, StoreError> {
        let key = Self::json_key(suffix);
        match self.read_one(&key).await? {
            None => Ok(None),
            Some((value, _)) => decode_json(&key, &value).map(Some),
        }
    }

    /// Every JSON value under `/calico/v1/<suffix_prefix>`, sorted by key. Each comes with
    /// its key suffix (the key without `/calico/v1/`, as `get_json` takes it) and its own
    /// decode result, so one bad value does not hide the others.
    pub async fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        suffix_prefix: &str,
    ) -> Result<Vec<(String, Result<T, String>)>, StoreError> {
        let (items, _) = self.range(&Self::json_key(suffix_prefix)).await?;
        Ok(items
            .into_iter()
            .map(|(key, value, _)| {
                let suffix = key.strip_prefix(PREFIX).unwrap_or(&key).to_string();
                (suffix, serde_json::from_slice(&value).map_err(|e| e.to_string()))
            })
            .collect())
    }

    /// Deletes the value at `/calico/v1/<suffix>`; deleting a missing one is not an error.
    pub async fn delete_json(&self, suffix: &str) -> Result<(), StoreError> {
        let key = Self::json_key(suffix);
        self.kv_call(|mut kv| {
            let key = key.clone();
            async move { kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }
}

/// Decodes the plain JSON value stored at `key` (what [`Store::get_json`] does with the
/// bytes it reads); `Invalid`, naming the key, when it does not decode. Public so that
/// the fuzz tests can feed it hostile values without an etcd.
pub fn decode_json<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Invalid {
        key: key.to_string(),
        detail: e.to_string(),
    })
}
