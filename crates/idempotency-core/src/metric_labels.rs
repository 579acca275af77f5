//! The metric labels the kit reports: closed sets, so label cardinality stays bounded.

/// The error types the kit reports through [`IdempotencyMetrics::record_error`](crate::IdempotencyMetrics::record_error): a closed
/// set (a misspelt label cannot compile), so label cardinality stays bounded. Modelled on
/// fred's `ErrorKind::to_str`.
///
/// # Examples
/// ```
/// use idempotency_core::ErrorType;
/// assert_eq!(ErrorType::LeaseLost.as_str(), "lease_lost");
/// assert_eq!(ErrorType::LeaseLost.status(), "error_lease_lost");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorType {
    /// Stored bytes that are not a record (corrupted or of the wrong shape).
    Validation,
    /// A stored record whose expiry cannot be judged (a timestamp without a timezone), as the Python library labels it.
    Deserialization,
    /// A result that could not be serialized for storage.
    Serialization,
    /// A connection to the store failed or was refused.
    Connection,
    /// A command to the store timed out.
    Timeout,
    /// The store answered with an error (WRONGTYPE, NOSCRIPT, …).
    Response,
    /// Any other failure of the store.
    Storage,
    /// The coordinator could not read the key.
    StorageGet,
    /// The coordinator could not reserve the key.
    StorageReserve,
    /// The coordinator could not store the result.
    StorageSave,
    /// The coordinator could not renew its reservation.
    StorageRenew,
    /// The coordinator could not release its reservation.
    StorageRelease,
    /// The coordinator could not store a result: its adapter could not encode it.
    RecordValidation,
    /// A key was reused for a different request.
    KeyReuse,
    /// Our reservation was taken over before we completed.
    LeaseLost,
    /// A stored result the adapter could not decode.
    Decode,
}

impl ErrorType {
    /// Every error type.
    pub const ALL: &[ErrorType] = &[
        ErrorType::Validation,
        ErrorType::Deserialization,
        ErrorType::Serialization,
        ErrorType::Connection,
        ErrorType::Timeout,
        ErrorType::Response,
        ErrorType::Storage,
        ErrorType::StorageGet,
        ErrorType::StorageReserve,
        ErrorType::StorageSave,
        ErrorType::StorageRenew,
        ErrorType::StorageRelease,
        ErrorType::RecordValidation,
        ErrorType::KeyReuse,
        ErrorType::LeaseLost,
        ErrorType::Decode,
    ];

    /// The label text (the Python library's spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorType::Validation => "validation_error",
            ErrorType::Deserialization => "deserialization_error",
            ErrorType::Serialization => "serialization_error",
            ErrorType::Connection => "connection_error",
            ErrorType::Timeout => "timeout_error",
            ErrorType::Response => "response_error",
            ErrorType::Storage => "storage_error",
            ErrorType::StorageGet => "storage_get_error",
            ErrorType::StorageReserve => "storage_reserve_error",
            ErrorType::StorageSave => "storage_save_error",
            ErrorType::StorageRenew => "storage_renew_error",
            ErrorType::StorageRelease => "storage_release_error",
            ErrorType::RecordValidation => "record_validation_error",
            ErrorType::KeyReuse => "key_reuse",
            ErrorType::LeaseLost => "lease_lost",
            ErrorType::Decode => "decode_error",
        }
    }

    /// The `status` label of the operations counter: `error_<type>`.
    pub const fn status(self) -> &'static str {
        match self {
            ErrorType::Validation => "error_validation_error",
            ErrorType::Deserialization => "error_deserialization_error",
            ErrorType::Serialization => "error_serialization_error",
            ErrorType::Connection => "error_connection_error",
            ErrorType::Timeout => "error_timeout_error",
            ErrorType::Response => "error_response_error",
            ErrorType::Storage => "error_storage_error",
            ErrorType::StorageGet => "error_storage_get_error",
            ErrorType::StorageReserve => "error_storage_reserve_error",
            ErrorType::StorageSave => "error_storage_save_error",
            ErrorType::StorageRenew => "error_storage_renew_error",
            ErrorType::StorageRelease => "error_storage_release_error",
            ErrorType::RecordValidation => "error_record_validation_error",
            ErrorType::KeyReuse => "error_key_reuse",
            ErrorType::LeaseLost => "error_lease_lost",
            ErrorType::Decode => "error_decode_error",
        }
    }
}

/// The storage calls whose latency is recorded through
/// [`IdempotencyMetrics::record_latency`](crate::IdempotencyMetrics::record_latency): the `method` label, a closed set.
///
/// # Examples
/// ```
/// assert_eq!(idempotency_core::LatencyMethod::GetMany.as_str(), "get_many");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LatencyMethod {
    /// A read of one key (the coordinator's unreserved flow).
    Get,
    /// Storing a result (completion or insert-if-absent).
    Save,
    /// Claiming a key.
    Reserve,
    /// Deleting one key.
    Delete,
    /// A bulk read.
    GetMany,
    /// A bulk insert.
    SaveMany,
    /// A bulk delete.
    DeleteMany,
}

impl LatencyMethod {
    /// The label text.
    pub const fn as_str(self) -> &'static str {
        match self {
            LatencyMethod::Get => "get",
            LatencyMethod::Save => "save",
            LatencyMethod::Reserve => "reserve",
            LatencyMethod::Delete => "delete",
            LatencyMethod::GetMany => "get_many",
            LatencyMethod::SaveMany => "save_many",
            LatencyMethod::DeleteMany => "delete_many",
        }
    }
}
