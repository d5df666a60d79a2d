//! Datanets themselves: create, edit, get and list (with visibility), and the API view of a
//! stored Datanet.

use openledger_core::{ErrorCode, Id};
use openledger_proto::{
    common::v1::PageResponse,
    datanet::v1::{self as pb, Visibility},
    timestamp,
};
use openledger_store::{db::retry_when_busy, now_ms};
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
    TransactionTrait,
};

use crate::{
    DatanetError,
    entities::{datanet, grant},
    limits,
    signing::{self, Key},
};

use super::Datanets;
use super::states::{GrantState, schema_of, stored_json, stored_schema, visibility};
use super::validation::{
    check_description, check_editable, check_labels, check_slug, check_tags, check_text, complete_policy, keys,
};
use super::{invalid, lock_datanet, page_size_of, require_owner};
use crate::parse::RecordSchema;
use openledger_proto::datanet::v1::RecordSchema as WireSchema;

impl Datanets {
    /// Creates a Datanet owned by the signer.
    pub async fn create(
        &self,
        mut wanted: pb::Datanet,
        signature: Option<openledger_proto::common::v1::Signature>,
    ) -> Result<pb::Datanet, DatanetError> {
        let signature = signature.ok_or_else(|| invalid("signature is required: the owner signs the creation"))?;
        let owner = signing::verify(&signature.public_key, &signature.signature, &signing::create_message(&wanted))?;
        check_slug(&wanted.slug)?;
        check_text("name", &wanted.name, 1, limits::MAX_NAME_CHARS)?;
        check_editable(&wanted)?;
        check_text("licence", &wanted.licence, 1, limits::MAX_LICENCE_CHARS)?;
        let schema = schema_of(wanted.schema)?;
        check_labels(schema, &wanted.label_set)?;
        if !matches!(Visibility::try_from(wanted.visibility), Ok(Visibility::Public | Visibility::Private)) {
            return Err(invalid("visibility must be public or private"));
        }
        let validators = keys("validators", &wanted.validators, limits::MAX_VALIDATORS)?;
        wanted.policy = Some(complete_policy(wanted.policy.take().unwrap_or_default())?);
        let existing = datanet::Entity::find().filter(datanet::Column::Slug.eq(&wanted.slug)).one(&self.db).await?;
        if let Some(existing) = existing {
            let existing = view(&existing)?;
            if existing.owner == owner {
                return Ok(existing); // a retried creation
            }
            return Err(DatanetError::new(
                ErrorCode::AlreadyExists,
                format!("the slug {:?} is taken: choose another", wanted.slug),
            ));
        }
        let id = Id::new().to_string();
        let row = datanet::ActiveModel {
            id: Set(id.clone()),
            slug: Set(wanted.slug.clone()),
            name: Set(wanted.name.clone()),
            summary: Set(wanted.summary.clone()),
            description: Set(wanted.description_markdown.clone()),
            tags: Set(json(&wanted.tags)?),
            schema: Set(wanted.schema as i16),
            label_set: Set(json(&wanted.label_set)?),
            licence: Set(wanted.licence.clone()),
            visibility: Set(wanted.visibility as i16),
            policy: Set(wanted.policy.clone().unwrap_or_default().encode_to_vec()),
            owner: Set(owner.to_vec()),
            validators: Set(validators.concat()),
            created_at: Set(now_ms()),
            revision: Set(0),
            index_generation: Set(0),
        };
        row.insert(&self.db).await.map_err(|error| {
            if is_unique_violation(&error) {
                DatanetError::new(ErrorCode::AlreadyExists, format!("the slug {:?} is taken", wanted.slug))
            } else {
                error.into()
            }
        })?;
        self.get(&id, Some(owner)).await
    }

    /// Edits summary, description, tags and policy (the owner only).
    pub async fn update(&self, request: pb::UpdateDatanetRequest) -> Result<pb::Datanet, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        let caller = signing::verify(&signature.public_key, &signature.signature, &signing::update_message(&request))?;
        signing::check_fresh(request.signed_at, signing::now_unix())?;
        let row = self.row(&request.id, Some(caller)).await?;
        require_owner(&row, &caller, "edit the Datanet")?;
        let wanted = request.datanet.unwrap_or_default();
        let mut mask: Vec<&str> = request.update_mask.iter().map(String::as_str).collect();
        if mask.is_empty() {
            mask = vec!["summary", "description_markdown", "tags", "policy"];
        }
        let mut active: datanet::ActiveModel = row.clone().into();
        for field in mask {
            match field {
                "summary" => {
                    check_text("summary", &wanted.summary, 0, limits::MAX_SUMMARY_CHARS)?;
                    active.summary = Set(wanted.summary.clone());
                }
                "description_markdown" => {
                    check_description(&wanted.description_markdown)?;
                    active.description = Set(wanted.description_markdown.clone());
                }
                "tags" => {
                    check_tags(&wanted.tags)?;
                    active.tags = Set(json(&wanted.tags)?);
                }
                "policy" => {
                    let policy = complete_policy(wanted.policy.clone().unwrap_or_default())?;
                    active.policy = Set(policy.encode_to_vec());
                }
                other => {
                    return Err(invalid(format!(
                        "{other:?} cannot be changed: only summary, description_markdown, tags and policy are editable"
                    )));
                }
            }
        }
        // Under the Datanet's write lock, so no upload commits under a half-changed policy.
        retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            lock_datanet(&txn, &row.id).await?;
            active.clone().update(&txn).await?;
            txn.commit().await?;
            Ok::<_, DatanetError>(())
        })
        .await?;
        self.get(&row.id, Some(caller)).await
    }

    /// A Datanet by id or slug, if the caller may see it (private ones are invisible to others).
    pub async fn get(&self, id_or_slug: &str, caller: Option<Key>) -> Result<pb::Datanet, DatanetError> {
        view(&self.row(id_or_slug, caller).await?)
    }

    /// Datanets the caller may see, newest first, optionally with a tag.
    pub async fn list(
        &self,
        tag: &str,
        page_size: u32,
        page_token: &str,
        caller: Option<Key>,
    ) -> Result<(Vec<pb::Datanet>, PageResponse), DatanetError> {
        let size = page_size_of(page_size);
        // Visible: public, or owned by the caller, or granted to the caller. (Validators of a
        // private Datanet see it by id, not in lists.)
        let mut visible = Condition::any().add(datanet::Column::Visibility.eq(Visibility::Public as i16));
        if let Some(caller) = caller {
            let granted = grant::Entity::find()
                .select_only()
                .column(grant::Column::DatanetId)
                .filter(grant::Column::Grantee.eq(caller.to_vec()))
                .filter(grant::Column::State.eq(GrantState::Approved))
                .into_query();
            visible =
                visible.add(datanet::Column::Owner.eq(caller.to_vec())).add(datanet::Column::Id.in_subquery(granted));
        }
        let mut query = datanet::Entity::find().filter(visible).order_by_desc(datanet::Column::Id);
        if !tag.is_empty() {
            // Tags are stored as a JSON array of [a-z0-9-] words: a quoted match is exact.
            check_tags(std::slice::from_ref(&tag.to_owned()))?;
            query = query.filter(datanet::Column::Tags.contains(format!("\"{tag}\"")));
        }
        if !page_token.is_empty() {
            query = query.filter(datanet::Column::Id.lt(page_token));
        }
        let mut rows = query.limit(u64::from(size) + 1).all(&self.db).await?;
        let next = openledger_store::page::cut_page(&mut rows, size, |row| row.id.clone());
        let found = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
        Ok((found, PageResponse { next_page_token: next }))
    }
}

pub(super) fn view(row: &datanet::Model) -> Result<pb::Datanet, DatanetError> {
    Ok(pb::Datanet {
        id: row.id.clone(),
        slug: row.slug.clone(),
        name: row.name.clone(),
        summary: row.summary.clone(),
        description_markdown: row.description.clone(),
        tags: stored_json("tags", &row.tags)?,
        schema: wire_schema(stored_schema(row.schema)?) as i32,
        label_set: stored_json("label set", &row.label_set)?,
        licence: row.licence.clone(),
        visibility: visibility(row.visibility)? as i32,
        policy: Some(policy_of(row)?),
        owner: row.owner.clone(),
        validators: row.validators.chunks_exact(32).map(<[u8]>::to_vec).collect(),
        created_at: Some(timestamp(row.created_at)),
    })
}

pub(super) fn policy_of(row: &datanet::Model) -> Result<pb::ContributionPolicy, DatanetError> {
    pb::ContributionPolicy::decode(row.policy.as_slice())
        .map_err(|error| DatanetError::new(ErrorCode::Internal, format!("the stored policy is corrupt: {error}")))
}

/// A write refused by a unique index (by the database's error code, on SQLite and PostgreSQL).
pub(super) fn is_unique_violation(error: &sea_orm::DbErr) -> bool {
    matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// A list of strings as stored in a JSON column.
fn json(values: &[String]) -> Result<String, DatanetError> {
    serde_json::to_string(values)
        .map_err(|error| DatanetError::new(ErrorCode::Internal, format!("encoding a JSON column failed: {error}")))
}

fn wire_schema(schema: RecordSchema) -> WireSchema {
    match schema {
        RecordSchema::FreeText => WireSchema::FreeText,
        RecordSchema::InstructionResponse => WireSchema::InstructionResponse,
        RecordSchema::LabelledText => WireSchema::LabelledText,
    }
}
