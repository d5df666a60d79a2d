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
