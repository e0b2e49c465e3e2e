-- traffic.sql — the app's normal work: sign-ups, profiles, friend requests.
INSERT INTO users (username, email)
SELECT 'player' || g, 'player' || g || '@example.com' FROM generate_series(1, 40) g;
INSERT INTO "UserProfile" (user_id, bio, favorite)
SELECT id, 'likes co-op games', 'chess' FROM users;
INSERT INTO friend_requests (from_user, to_user)
SELECT a.id, b.id FROM users a JOIN users b ON b.username = 'player' || (split_part(a.username, 'player', 2)::int % 40 + 1);
INSERT INTO games (title) VALUES ('Chess'), ('Go'), ('Catan');
UPDATE friend_requests SET status = 'accepted' WHERE from_user IN (SELECT id FROM users WHERE username IN ('player1', 'player2'));
