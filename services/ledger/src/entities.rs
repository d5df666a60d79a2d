//! sea-orm entities of the ledger's tables (see migration `m20261124_000002_ledger`).

pub mod account {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Vec<u8>,
        pub owner_kind: i16,
        pub owner: Vec<u8>,
        pub ledger: i64,
        pub code: i32,
        pub flags: i32,
        pub debits_pending: Vec<u8>,
        pub debits_posted: Vec<u8>,
        pub credits_pending: Vec<u8>,
        pub credits_posted: Vec<u8>,
        pub timestamp: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod transfer {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_transfers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Vec<u8>,
        pub debit_account_id: Vec<u8>,
        pub credit_account_id: Vec<u8>,
        pub amount: Vec<u8>,
        pub pending_id: Vec<u8>,
        pub user_data: Vec<u8>,
        pub timeout_seconds: i64,
        pub ledger: i64,
        pub code: i32,
        pub flags: i32,
        pub timestamp: i64,
        pub journal_sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod pending {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_pending")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Vec<u8>,
        pub state: i16,
        pub expires_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod journal {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_journal")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sequence: i64,
        pub previous: Vec<u8>,
        pub batch_hash: Vec<u8>,
        pub entry_hash: Vec<u8>,
        pub transfer_count: i64,
        pub last_timestamp: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod meta {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_meta")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub value: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod parameters {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_parameters")]
    pub struct Model {
        /// Nanoseconds: the start of the epoch from which these parameters apply.
        #[sea_orm(primary_key, auto_increment = false)]
        pub effective_from: i64,
        pub effective_from_epoch: i64,
        pub parameters: String,
        pub proposal_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod proposal {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_proposals")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub proposer: Vec<u8>,
        pub parameters: String,
        pub rationale: String,
        pub created_at: i64,
        pub voting_ends: i64,
        pub executable_after: i64,
        pub state: i16,
        pub effective_from_epoch: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod vote {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_votes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub proposal_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account: Vec<u8>,
        pub approve: bool,
        pub weight: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Each account's running total of settlement payouts to contributors (migration
/// `m20261206_000014_ledger_earnings`), written with the payouts.
pub mod earnings {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_earnings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Vec<u8>,
        /// u128, big-endian.
        pub earned: Vec<u8>,
        pub payouts: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
