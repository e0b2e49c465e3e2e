-- schema.sql — the demo's small gaming-community app (replaced by the full incident
-- replay later): players, their profiles and friend requests, a quoted CamelCase table,
-- uuid keys and ON DELETE CASCADE, plus the two roles that act on it.
DROP SCHEMA IF EXISTS public CASCADE;
CREATE SCHEMA public;

CREATE TABLE users (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username   text NOT NULL UNIQUE,
    email      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE "UserProfile" (
    user_id  uuid PRIMARY KEY REFERENCES users ON DELETE CASCADE,
    bio      text,
    favorite text
);
CREATE TABLE friend_requests (
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    from_user uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    to_user   uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    status    text NOT NULL DEFAULT 'pending'
);
CREATE TABLE games (
    id    serial PRIMARY KEY,
    title text NOT NULL
);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gameclub_app') THEN
        CREATE ROLE gameclub_app LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ops_dev') THEN
        CREATE ROLE ops_dev LOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA public TO gameclub_app, ops_dev;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gameclub_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gameclub_app;
-- The developer's role owns nothing but was given far too much.
GRANT SELECT, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO ops_dev;
