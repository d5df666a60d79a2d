//! sea-orm entities of the registry's tables (see migration `m20261205_000006_modelfactory`).

pub mod adapter {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "modelfactory_adapters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// [`super::PENDING`] while the files are written, then [`super::READY`].
        pub state: i16,
        /// The owner's ed25519 public key.
        pub owner: Vec<u8>,
        /// The owner's ledger account, decimal.
        pub owner_account: String,
        pub base_model: String,
        pub base_model_hash: Vec<u8>,
        pub location: String,
        pub source: String,
        pub config_hash: Vec<u8>,
        pub config_bytes: i64,
        pub weights_hash: Vec<u8>,
        pub weights_bytes: i64,
        pub rank: i32,
        /// JSON array of module names.
        pub target_modules: String,
        /// Base units per 1000 tokens, decimal.
        pub price_in: String,
        pub price_out: String,
        pub visibility: i16,
        pub description: String,
        pub listed: bool,
        pub datanet_id: String,
        pub snapshot_id: String,
        pub snapshot_root: Vec<u8>,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod access {
    use sea_orm::entity::prelude::*;

    /// One account on an adapter's allow-list.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "modelfactory_adapter_access")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub adapter_id: String,
        /// Decimal account id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub account: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A row whose files are being written: invisible to readers.
pub const PENDING: i16 = 0;
/// A row whose files are in the object store.
pub const READY: i16 = 1;

pub mod job {
    use sea_orm::entity::prelude::*;

    /// One fine-tuning job (migration `m20261206_000008_finetune`).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "modelfactory_jobs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The owner's ledger account, decimal.
        pub owner_account: String,
        pub idempotency_key: Option<String>,
        /// `pb::JobState` as a number.
        pub state: i16,
        pub base_model: String,
        pub training_file: String,
        pub validation_file: String,
        pub datanet_id: String,
        pub snapshot_id: String,
        pub datanet_version: i64,
        pub snapshot_root: Vec<u8>,
        pub grant_id: String,
        /// The request's hyper-parameters as asked (`pb::Hyperparameters`, protobuf bytes).
        pub request: Vec<u8>,
        /// The run's `TrainConfig` as JSON, once resolved from the data (empty before).
        pub config: String,
        pub suffix: String,
        /// Decimal u64.
        pub seed: String,
        /// JSON object of strings.
        pub metadata: String,
        pub fine_tuned_model: String,
        pub trained_tokens: i64,
        pub step: i64,
        pub total_steps: i64,
        pub training_records: i64,
        /// The validation version as JSON (`jobs::store::HeldOutVersion`, migration
        /// `m20261206_000013_finetune_validation`); none when a share of the training version is
        /// held out.
        pub validation: Option<String>,
        pub estimated_finish_ms: Option<i64>,
        pub error_code: String,
        pub error_message: String,
        pub error_param: String,
        /// `pb::EvalMetrics` as protobuf bytes, or empty.
        pub final_metrics: Vec<u8>,
        pub executor: String,
        pub created_at_ms: i64,
        pub started_at_ms: Option<i64>,
        pub finished_at_ms: Option<i64>,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod job_event {
    use sea_orm::entity::prelude::*;

    /// One event of a job, in the order it happened.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "modelfactory_job_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub sequence: i64,
        pub at_ms: i64,
        pub level: String,
        pub message: String,
        /// Unused (0): what happened is in `data`.
        pub kind: i16,
        /// `pb::JobEvent` as protobuf bytes.
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod job_checkpoint {
    use sea_orm::entity::prelude::*;

    /// A checkpoint a job wrote, with the metrics at that step.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "modelfactory_job_checkpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub step: i64,
        pub at_ms: i64,
        pub train_loss: f64,
        /// `pb::EvalMetrics` as protobuf bytes, or empty.
        pub eval: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
