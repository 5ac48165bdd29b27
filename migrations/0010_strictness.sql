-- How strictly each coach keeps to its sources (see chat/faithfulness): strict, balanced or open.
ALTER TABLE coaches ADD COLUMN strictness TEXT NOT NULL DEFAULT 'strict'
    CHECK (strictness IN ('strict', 'balanced', 'open'));
