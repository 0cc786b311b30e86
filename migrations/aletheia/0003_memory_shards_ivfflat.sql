-- revision: 0003
-- down_revision: 0002
-- message: IVFFlat index on memory_shards.embedding
-- transaction: none
-- condition: PGVECTOR_ENABLE_IVFFLAT
-- analyze: memory_shards

-- +upgrade
-- CONCURRENTLY cannot run inside a transaction block, hence "transaction: none";
-- IF NOT EXISTS makes a retry after a partial run safe. If a concurrent build
-- was interrupted it leaves an INVALID index behind that IF NOT EXISTS would
-- keep: run the downgrade (or DROP INDEX CONCURRENTLY) before retrying.
-- The IVFFlat centroids are computed from the rows present at build time, so
-- the index is best built once the table holds representative data.
CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_memory_shards_embedding_ivfflat
    ON memory_shards USING ivfflat (embedding vector_cosine_ops)
    WITH (lists = ${PGVECTOR_IVFFLAT_LISTS});

-- +downgrade
DROP INDEX CONCURRENTLY IF EXISTS ix_memory_shards_embedding_ivfflat;
