//! sea-orm entities of the Datanet tables (see migrations `m20261125_000005_datanet` and
//! `m20261206_000011_datanet_quality`).

macro_rules! entity {
    ($module:ident, $table:literal, { $($body:tt)* }) => {
        pub mod $module {
            use sea_orm::entity::prelude::*;

            #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
            #[sea_orm(table_name = $table)]
            pub struct Model { $($body)* }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}

            impl ActiveModelBehavior for ActiveModel {}
        }
    };
}

entity!(datanet, "datanets", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub slug: String,
    pub name: String,
    pub summary: String,
    pub description: String,
    /// JSON array of strings.
    pub tags: String,
    pub schema: i16,
    /// JSON array of strings.
    pub label_set: String,
    pub licence: String,
    pub visibility: i16,
    /// `ContributionPolicy`, protobuf-encoded.
    pub policy: Vec<u8>,
    pub owner: Vec<u8>,
    /// Validators' 32-byte keys, concatenated.
    pub validators: Vec<u8>,
    pub created_at: i64,
    /// Bumped by every change to the draft (and used as the Datanet's write lock).
    pub revision: i64,
    /// Bumped when records leave the near-duplicate index (rejected or removed): every
    /// process then rebuilds its copy of the index from the database.
    pub index_generation: i64,
});

entity!(contribution, "datanet_contributions", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub datanet_id: String,
    pub contributor: Vec<u8>,
    pub account_id: Option<Vec<u8>>,
    pub status: i16,
    pub reason: String,
    pub file_name: String,
    pub media_type: String,
    pub size_bytes: i64,
    pub file_hash: Vec<u8>,
    pub signature: Vec<u8>,
    pub record_count: i32,
    pub quality_score: i32,
    /// Base units, decimal.
    pub bond: String,
    pub bond_state: i16,
    pub submitted_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<Vec<u8>>,
    /// Why a decided bond is released or slashed when that is not `reason` (the contribution's
    /// own decision), e.g. its quality assessment; given to the ledger.
    pub bond_reason: Option<String>,
});

entity!(record, "datanet_records", {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub datanet_id: String,
    pub contribution_id: String,
    pub ordinal: i32,
    pub contributor: Vec<u8>,
    pub hash: Vec<u8>,
    pub quality: i32,
    pub status: i16,
    pub duplicate_of: Option<String>,
    /// The MinHash signature (little-endian u32s), from which the index is rebuilt.
    pub minhash: Option<Vec<u8>>,
    pub size_bytes: i32,
});

entity!(snapshot, "datanet_snapshots", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub datanet_id: String,
    pub version: i64,
    pub merkle_root: Vec<u8>,
    pub record_count: i64,
    /// JSON object: contributor key (hex) → records.
    pub contributor_counts: String,
    pub records_added: i64,
    pub records_removed: i64,
    pub revision: i64,
    pub sealed_at: i64,
});

entity!(snapshot_record, "datanet_snapshot_records", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub snapshot_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i64,
    pub hash: Vec<u8>,
    pub contribution_id: String,
    pub contributor: Vec<u8>,
});

entity!(grant, "datanet_grants", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub datanet_id: String,
    pub grantee: Vec<u8>,
    pub state: i16,
    pub purpose: String,
    pub requested_at: i64,
    pub decided_at: Option<i64>,
});

entity!(read, "datanet_reads", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub grant_id: String,
    pub datanet_id: String,
    pub snapshot_id: String,
    pub grantee: Vec<u8>,
    /// A platform service reading for the grantee (`job:<id>`), or empty.
    pub reader: String,
    pub records: i64,
    pub at: i64,
});

/// The evidence of a bond slashed for harmful data (`datanet_bond_slashes`): apart from the
/// macro because its scores are floating point (no `Eq`).
pub mod bond_slash {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "datanet_bond_slashes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contribution_id: String,
        pub datanet_id: String,
        /// The sealed version whose first evaluated adapter measured the contribution.
        pub snapshot_id: String,
        pub adapter_id: String,
        pub estimator: String,
        /// Robust z-score of the contribution's influence on the validation loss.
        pub score: f64,
        /// Deviations below the typical record's score that made the contribution a candidate.
        pub threshold: f64,
        pub evidence: String,
        /// The `ol.attribution.quality.assessed` event that decided the slash.
        pub event_id: String,
        pub at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
