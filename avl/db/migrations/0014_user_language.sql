-- A user's language for the web console (and what else is written for that user): `es` (Spanish,
-- Venezuela) or `en` (English). NULL: no choice made, so the service's default (AVL_LANGUAGE).
ALTER TABLE users ADD COLUMN language text CHECK (language IN ('es', 'en'));
