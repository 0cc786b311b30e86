-- revision: 0002
-- down_revision: 0001
-- message: memory_links table and memory_shards.status
-- lint-ignore: require-concurrent-index-creation -- memory_shards is new with this release (0001): the in-transaction build holds its write lock for milliseconds, and lock_timeout bounds the wait for it
-- lint-ignore: require-concurrent-index-deletion -- downgrade only: the index is small (see above) and lock_timeout bounds the wait for the table

-- +upgrade
-- Directed, typed edges between memory shards (the agent's memory graph).
CREATE TABLE memory_links (
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id       text        NOT NULL,
    source_shard_id uuid        NOT NULL,
    target_shard_id uuid        NOT NULL,
    link_type       text        NOT NULL,
    weight          real        NOT NULL DEFAULT 1.0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_memory_links PRIMARY KEY (id),
    CONSTRAINT fk_memory_links_source_shard FOREIGN KEY (source_shard_id)
        REFERENCES memory_shards (id) ON DELETE CASCADE,
    CONSTRAINT fk_memory_links_target_shard FOREIGN KEY (target_shard_id)
        REFERENCES memory_shards (id) ON DELETE CASCADE,
    CONSTRAINT uq_memory_links_source_target_type
        UNIQUE (source_shard_id, target_shard_id, link_type),
    CONSTRAINT ck_memory_links_tenant_id_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT ck_memory_links_no_self_link CHECK (source_shard_id <> target_shard_id),
    CONSTRAINT ck_memory_links_link_type CHECK (
        link_type IN ('related', 'supports', 'contradicts', 'supersedes', 'derived_from')
    ),
    CONSTRAINT ck_memory_links_weight_range CHECK (weight >= 0 AND weight <= 1)
);

-- Outgoing edges are served by the unique index (source_shard_id first).
-- Incoming edges, and the ON DELETE CASCADE from the target side, need their own index.
CREATE INDEX ix_memory_links_target_shard
    ON memory_links (target_shard_id);
CREATE INDEX ix_memory_links_tenant_created
    ON memory_links (tenant_id, created_at DESC);

-- Soft lifecycle for shards. A constant default is metadata-only on
-- PostgreSQL 11+ (no table rewrite); the CHECK is validated with one scan.
ALTER TABLE memory_shards
    ADD COLUMN status text NOT NULL DEFAULT 'active'
        CONSTRAINT ck_memory_shards_status CHECK (status IN ('active', 'archived', 'forgotten'));

-- Built inside the revision's transaction (table locked for the build):
-- fine at this stage of the app; large existing tables would want a
-- separate "transaction: none" revision with CREATE INDEX CONCURRENTLY.
CREATE INDEX ix_memory_shards_tenant_status_created
    ON memory_shards (tenant_id, status, created_at DESC);

-- +downgrade
-- Exact reverse of the upgrade. Dropping the column also drops
-- ck_memory_shards_status; the index is dropped first to be explicit.
DROP INDEX ix_memory_shards_tenant_status_created;
ALTER TABLE memory_shards DROP COLUMN status;
DROP TABLE memory_links;
