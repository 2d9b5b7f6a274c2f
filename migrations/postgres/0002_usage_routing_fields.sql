-- Which provider key served a request, its A/B variant, and the similarity of a semantic cache hit.
ALTER TABLE usage_events ADD COLUMN key_source TEXT NOT NULL DEFAULT 'global';
ALTER TABLE usage_events ADD COLUMN variant TEXT;
ALTER TABLE usage_events ADD COLUMN cache_similarity DOUBLE PRECISION;
