package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kohakuriver/kohakuriver/agent/clusterauth"
	"github.com/kohakuriver/kohakuriver/store"
)

// AdminUser is the user EnsureAdmin creates.
const AdminUser = "admin"

// maxTokenLen bounds the bearer token we hash; ours are 47 characters.
const maxTokenLen = 512

// NewToken returns a new random secret, made as clusterauth.NewToken makes
// cluster tokens ("krt_" and 32 random bytes, base64url: 47 characters). It
// serves as API token and as cluster token.
func NewToken() string { return clusterauth.NewToken() }

// HashToken returns what store.User.TokenHash holds for token: hex SHA-256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

type ctxKey int

const (
	userKey ctxKey = iota
	infoKey
)

func withUser(ctx context.Context, u store.User) context.Context {
	return context.WithValue(ctx, userKey, u)
}

// userFrom returns the authenticated user. Only handlers registered with
// accessUser or accessAdmin may call it.
func userFrom(ctx context.Context) store.User {
	u, ok := ctx.Value(userKey).(store.User)
	if !ok {
		panic("api: handler without authentication asked for the user") // wiring bug in routes
	}
	return u
}

func withInfo(ctx context.Context, ri *reqInfo) context.Context {
	return context.WithValue(ctx, infoKey, ri)
}

// info returns the request's reqInfo; a throwaway one when the request
// did not pass withRequestLog.
func info(r *http.Request) *reqInfo {
	if ri, ok := r.Context().Value(infoKey).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{id: "-", log: slog.New(slog.DiscardHandler)}
}

// authenticate finds the user of r's bearer token. The token is hashed
// before anything looks at it: the store is searched by hash, so response
// timing says nothing about the token, and the found record's hash is
// compared again in constant time.
func (srv *Server) authenticate(r *http.Request) (store.User, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return store.User{}, errorf(http.StatusUnauthorized,
			"missing API token: send \"Authorization: Bearer <token>\" (the admin token is in the host's data dir, admin.token)")
	}
	scheme, token, _ := strings.Cut(h, " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" || len(token) > maxTokenLen {
		return store.User{}, errorf(http.StatusUnauthorized, "malformed Authorization header: expected \"Bearer <token>\"")
	}
	hash := HashToken(token)
	u, err := srv.st.UserByTokenHash(r.Context(), hash)
	if errors.Is(err, store.ErrNotFound) || (err == nil && subtle.ConstantTimeCompare([]byte(u.TokenHash), []byte(hash)) != 1) {
		return store.User{}, errorf(http.StatusUnauthorized, "invalid API token; ask an admin for a new one")
	}
	if err != nil {
		return store.User{}, fmt.Errorf("look up token: %w", err)
	}
	return u, nil
}

// EnsureAdmin is EnsureAdminWithLogger without logging.
func EnsureAdmin(ctx context.Context, st store.Store, tokenPath string) (created bool, err error) {
	return EnsureAdminWithLogger(ctx, st, tokenPath, nil)
}

// EnsureAdminWithLogger creates the user "admin" (an admin) when it does
// not exist, with a new token written to tokenPath (mode 0600, its
// directory created 0700), and reports whether it did. The file is written
// before the user is stored, so a crash between the two leaves a file whose
// token is replaced at the next start, never an admin nobody can use. When
// the user exists nothing changes, even if the file is gone: the token
// cannot be recovered from its hash, and the situation is logged at Warn.
// The token is never logged.
func EnsureAdminWithLogger(ctx context.Context, st store.Store, tokenPath string, logger *slog.Logger) (created bool, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	_, err = st.User(ctx, AdminUser)
	if err == nil {
		if _, serr := os.Stat(tokenPath); errors.Is(serr, os.ErrNotExist) {
			logger.Warn("admin user exists but its token file is missing; the token cannot be recovered, create another admin with an admin token or reset the store",
				"path", tokenPath)
		}
		return false, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return false, fmt.Errorf("ensure admin: %w", err)
	}
	token := NewToken()
	if err := writeTokenFile(tokenPath, token); err != nil {
		return false, fmt.Errorf("ensure admin: %w", err)
	}
	_, err = st.CreateUser(ctx, store.User{Name: AdminUser, Admin: true, TokenHash: HashToken(token), CreatedAt: time.Now().UTC()})
	if err != nil {
		_ = os.Remove(tokenPath) // its token belongs to no user
		return false, fmt.Errorf("ensure admin: %w", err)
	}
	logger.Info("admin user created", "path", tokenPath)
	return true, nil
}

// writeTokenFile writes token to path atomically (temp file and rename),
// readable only by the owner.
func writeTokenFile(path, token string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("token dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".token-*") // created 0600
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("token file: %w", err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("token file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("token file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	return nil
}
