//! Datanets: their definitions, contributions and records (with MinHash signatures, from
//! which the near-duplicate index is rebuilt at start), sealed snapshots with their ordered
//! record hashes, access grants, and the log of every read for training.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Datanets {
    Table,
    Id,
    Slug,
    Name,
    Summary,
    Description,
    Tags,
    Schema,
    LabelSet,
    Licence,
    Visibility,
    Policy,
    Owner,
    Validators,
    CreatedAt,
    Revision,
    IndexGeneration,
}

#[derive(DeriveIden)]
enum DatanetContributions {
    Table,
    Id,
    DatanetId,
    Contributor,
    AccountId,
    Status,
    Reason,
    FileName,
    MediaType,
    SizeBytes,
    FileHash,
    Signature,
    RecordCount,
    QualityScore,
    Bond,
    BondState,
    SubmittedAt,
    DecidedAt,
    DecidedBy,
}

#[derive(DeriveIden)]
enum DatanetRecords {
    Table,
    Seq,
    DatanetId,
    ContributionId,
    Ordinal,
    Contributor,
    Hash,
    Quality,
    Status,
    DuplicateOf,
    Minhash,
    SizeBytes,
}

#[derive(DeriveIden)]
enum DatanetSnapshots {
    Table,
    Id,
    DatanetId,
    Version,
    MerkleRoot,
    RecordCount,
    ContributorCounts,
    RecordsAdded,
    RecordsRemoved,
    Revision,
    SealedAt,
}

#[derive(DeriveIden)]
enum DatanetSnapshotRecords {
    Table,
    SnapshotId,
    Position,
    Hash,
    ContributionId,
    Contributor,
}

#[derive(DeriveIden)]
enum DatanetGrants {
    Table,
    Id,
    DatanetId,
    Grantee,
    State,
    Purpose,
    RequestedAt,
    DecidedAt,
}

#[derive(DeriveIden)]
enum DatanetReads {
    Table,
    Id,
    GrantId,
    DatanetId,
    SnapshotId,
    Grantee,
    Records,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Datanets::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Datanets::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(Datanets::Slug).string_len(64).not_null().unique_key())
                    .col(ColumnDef::new(Datanets::Name).text().not_null())
                    .col(ColumnDef::new(Datanets::Summary).text().not_null())
                    .col(ColumnDef::new(Datanets::Description).text().not_null())
                    .col(ColumnDef::new(Datanets::Tags).text().not_null())
                    .col(ColumnDef::new(Datanets::Schema).small_integer().not_null())
                    .col(ColumnDef::new(Datanets::LabelSet).text().not_null())
                    .col(ColumnDef::new(Datanets::Licence).text().not_null())
                    .col(ColumnDef::new(Datanets::Visibility).small_integer().not_null())
                    .col(ColumnDef::new(Datanets::Policy).binary().not_null())
                    .col(ColumnDef::new(Datanets::Owner).binary().not_null())
                    .col(ColumnDef::new(Datanets::Validators).binary().not_null())
                    .col(ColumnDef::new(Datanets::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Datanets::Revision).big_integer().not_null())
                    .col(ColumnDef::new(Datanets::IndexGeneration).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DatanetContributions::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DatanetContributions::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(DatanetContributions::DatanetId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetContributions::Contributor).binary().not_null())
                    .col(ColumnDef::new(DatanetContributions::AccountId).binary().null())
                    .col(ColumnDef::new(DatanetContributions::Status).small_integer().not_null())
                    .col(ColumnDef::new(DatanetContributions::Reason).text().not_null())
                    .col(ColumnDef::new(DatanetContributions::FileName).text().not_null())
                    .col(ColumnDef::new(DatanetContributions::MediaType).text().not_null())
                    .col(ColumnDef::new(DatanetContributions::SizeBytes).big_integer().not_null())
                    .col(ColumnDef::new(DatanetContributions::FileHash).binary().not_null())
                    .col(ColumnDef::new(DatanetContributions::Signature).binary().not_null())
                    .col(ColumnDef::new(DatanetContributions::RecordCount).integer().not_null())
                    .col(ColumnDef::new(DatanetContributions::QualityScore).integer().not_null())
                    .col(ColumnDef::new(DatanetContributions::Bond).text().not_null())
                    .col(ColumnDef::new(DatanetContributions::BondState).small_integer().not_null())
                    .col(ColumnDef::new(DatanetContributions::SubmittedAt).big_integer().not_null())
                    .col(ColumnDef::new(DatanetContributions::DecidedAt).big_integer().null())
                    .col(ColumnDef::new(DatanetContributions::DecidedBy).binary().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("datanet_contributions_by_contributor_day")
                    .table(DatanetContributions::Table)
                    .col(DatanetContributions::DatanetId)
                    .col(DatanetContributions::Contributor)
                    .col(DatanetContributions::SubmittedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("datanet_contributions_same_file")
                    .table(DatanetContributions::Table)
                    .col(DatanetContributions::DatanetId)
                    .col(DatanetContributions::Contributor)
                    .col(DatanetContributions::FileHash)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("datanet_contributions_by_bond_state")
                    .table(DatanetContributions::Table)
                    .col(DatanetContributions::BondState)
                    .col(DatanetContributions::Status)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DatanetRecords::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DatanetRecords::Seq).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(DatanetRecords::DatanetId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetRecords::ContributionId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetRecords::Ordinal).integer().not_null())
                    .col(ColumnDef::new(DatanetRecords::Contributor).binary().not_null())
                    .col(ColumnDef::new(DatanetRecords::Hash).binary().not_null())
                    .col(ColumnDef::new(DatanetRecords::Quality).integer().not_null())
                    .col(ColumnDef::new(DatanetRecords::Status).small_integer().not_null())
                    .col(ColumnDef::new(DatanetRecords::DuplicateOf).string_len(64).null())
                    .col(ColumnDef::new(DatanetRecords::Minhash).binary().null())
                    .col(ColumnDef::new(DatanetRecords::SizeBytes).integer().not_null())
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("datanet_records_by_hash", vec![DatanetRecords::DatanetId, DatanetRecords::Hash]),
            ("datanet_records_by_contribution", vec![DatanetRecords::ContributionId, DatanetRecords::Ordinal]),
            ("datanet_records_by_datanet", vec![DatanetRecords::DatanetId, DatanetRecords::Seq]),
        ] {
            let mut index = Index::create();
            index.name(name).table(DatanetRecords::Table).if_not_exists();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(DatanetSnapshots::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DatanetSnapshots::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(DatanetSnapshots::DatanetId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetSnapshots::Version).big_integer().not_null())
                    .col(ColumnDef::new(DatanetSnapshots::MerkleRoot).binary().not_null())
                    .col(ColumnDef::new(DatanetSnapshots::RecordCount).big_integer().not_null())
                    .col(ColumnDef::new(DatanetSnapshots::ContributorCounts).text().not_null())
                    .col(ColumnDef::new(DatanetSnapshots::RecordsAdded).big_integer().not_null())
                    .col(ColumnDef::new(DatanetSnapshots::RecordsRemoved).big_integer().not_null())
                    .col(ColumnDef::new(DatanetSnapshots::Revision).big_integer().not_null())
                    .col(ColumnDef::new(DatanetSnapshots::SealedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("datanet_snapshots_version")
                    .table(DatanetSnapshots::Table)
                    .col(DatanetSnapshots::DatanetId)
                    .col(DatanetSnapshots::Version)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DatanetSnapshotRecords::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DatanetSnapshotRecords::SnapshotId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetSnapshotRecords::Position).big_integer().not_null())
                    .col(ColumnDef::new(DatanetSnapshotRecords::Hash).binary().not_null())
                    .col(ColumnDef::new(DatanetSnapshotRecords::ContributionId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetSnapshotRecords::Contributor).binary().not_null())
                    .primary_key(
                        Index::create().col(DatanetSnapshotRecords::SnapshotId).col(DatanetSnapshotRecords::Position),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("datanet_snapshot_records_by_contribution")
                    .table(DatanetSnapshotRecords::Table)
                    .col(DatanetSnapshotRecords::SnapshotId)
                    .col(DatanetSnapshotRecords::ContributionId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DatanetGrants::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DatanetGrants::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(DatanetGrants::DatanetId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetGrants::Grantee).binary().not_null())
                    .col(ColumnDef::new(DatanetGrants::State).small_integer().not_null())
                    .col(ColumnDef::new(DatanetGrants::Purpose).text().not_null())
                    .col(ColumnDef::new(DatanetGrants::RequestedAt).big_integer().not_null())
                    .col(ColumnDef::new(DatanetGrants::DecidedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("datanet_grants_by_grantee")
                    .table(DatanetGrants::Table)
                    .col(DatanetGrants::DatanetId)
                    .col(DatanetGrants::Grantee)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DatanetReads::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DatanetReads::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(DatanetReads::GrantId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetReads::DatanetId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetReads::SnapshotId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetReads::Grantee).binary().not_null())
                    .col(ColumnDef::new(DatanetReads::Records).big_integer().not_null())
                    .col(ColumnDef::new(DatanetReads::At).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            DatanetReads::Table.into_iden(),
            DatanetGrants::Table.into_iden(),
            DatanetSnapshotRecords::Table.into_iden(),
            DatanetSnapshots::Table.into_iden(),
            DatanetRecords::Table.into_iden(),
            DatanetContributions::Table.into_iden(),
            Datanets::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
