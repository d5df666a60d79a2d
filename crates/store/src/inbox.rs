//! The inbox: consumers record the event ids they have applied, on the same transaction as
//! the effect, so a redelivered event is recognised and skipped.

use sea_orm::{ConnectionTrait, EntityTrait, Set, sea_query::OnConflict};

use crate::{StoreError, now_ms};

pub(crate) mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "processed_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub processed_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Records that `consumer` applied `event_id`; true the first time, false for a repeat.
pub async fn first_delivery<C: ConnectionTrait>(
    connection: &C,
    consumer: &str,
    event_id: &str,
) -> Result<bool, StoreError> {
    let row = entity::ActiveModel {
        consumer: Set(consumer.to_owned()),
        event_id: Set(event_id.to_owned()),
        processed_at_ms: Set(now_ms()),
    };
    let inserted = entity::Entity::insert(row)
        .on_conflict(OnConflict::columns([entity::Column::Consumer, entity::Column::EventId]).do_nothing().to_owned())
        .exec_without_returning(connection)
        .await?;
    Ok(inserted == 1)
}
