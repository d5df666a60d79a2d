//! sea-orm entities of the worker's tables (see migrations `m20261206_000010_attribution` and
//! `m20261206_000012_attribution_quality`).

pub mod index {
    use sea_orm::entity::prelude::*;

    /// One index: `span:<snapshot_id>` (a sealed version's span index) or
    /// `gradient:<adapter_id>` (a trained adapter's gradient index).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "attribution_indexes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// `span` or `gradient`.
        pub kind: String,
        pub datanet_id: String,
        pub snapshot_id: String,
        /// The version's Merkle root the records are checked against.
        pub snapshot_root: Vec<u8>,
        /// The version's number; 0 when only its id was known.
        pub version: i64,
        /// Empty for a span index.
        pub adapter_id: String,
        /// `queued`, `building`, `ready` or `failed`.
        pub state: String,
        pub records_indexed: i64,
        /// The index's directory under the worker's data directory.
        pub location: String,
        /// BLAKE3 over the index's files; empty until ready.
        pub files_hash: Vec<u8>,
        pub error: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        /// A gradient index: JSON of where its adapter's files are and their hashes
        /// (`indexes::GradientSource`); empty for a span index.
        pub source: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attribution {
    use sea_orm::entity::prelude::*;

    /// One paid inference's attribution.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "attributions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub inference_id: String,
        pub adapter_id: String,
        pub datanet_id: String,
        pub snapshot_id: String,
        pub method: String,
        pub method_version: String,
        /// JSON: the receipt's weights (contribution, contributor, account, weight).
        pub weights: String,
        /// JSON: the spans and top records behind the weights.
        pub explained: String,
        /// JSON array of strings.
        pub notes: String,
        pub span_coverage_ppm: i64,
        /// `complete` or `partial`.
        pub completeness: String,
        /// Decimal; empty when the base model alone answered.
        pub model_owner_account: String,
        /// The account that paid, decimal.
        pub app_account: String,
        /// JSON: the prompt and completions the receipt hashes.
        pub inputs: String,
        /// The canonical receipt (JSON bytes).
        pub receipt: Vec<u8>,
        pub receipt_hash: Vec<u8>,
        pub batch_sequence: Option<i64>,
        pub leaf_index: Option<i64>,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod batch {
    use sea_orm::entity::prelude::*;

    /// One receipt batch: a Merkle tree over its receipts' hashes in leaf order.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "attribution_batches")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sequence: i64,
        pub root: Vec<u8>,
        pub size: i64,
        pub created_at_ms: i64,
        /// Set once the ledger's journal recorded the root.
        pub journal_sequence: Option<i64>,
        pub journal_entry_hash: Option<Vec<u8>>,
        pub recorded_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod quality {
    use sea_orm::entity::prelude::*;

    /// A version whose contributor quality was assessed (once, on the first adapter trained on
    /// it whose gradient index was built).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "attribution_quality")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub snapshot_id: String,
        pub datanet_id: String,
        pub adapter_id: String,
        pub estimator: String,
        pub threshold: f64,
        pub contributions: i64,
        pub candidates: i64,
        /// JSON: the quality report (`openledger_attribution::quality::QualityReport`).
        pub report: String,
        pub assessed_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
