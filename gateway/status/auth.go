package status

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Auth is what a request must carry to see the page, /api/* and
// /debug/pprof: a basic-auth user with its password, or a bearer token.
// The zero Auth requires nothing.
type Auth struct {
	Username, Password string // basic auth, when Username is set
	Token              string // Authorization: Bearer TOKEN, when set
}

// Configured reports whether any credential is set.
func (a Auth) Configured() bool { return a.Username != "" || a.Token != "" }

// Describe says in a few words what a client must send, for the log.
func (a Auth) Describe() string {
	switch {
	case a.Username != "" && a.Token != "":
		return "basic auth or bearer token"
	case a.Username != "":
		return "basic auth"
	case a.Token != "":
		return "bearer token"
	}
	return "none"
}

// Wrap returns h guarded by a: without credentials configured it is h
// itself; with them, a request without a matching credential gets 401
// and a WWW-Authenticate challenge. Credentials are compared in constant
// time (over SHA-256 digests, so their length does not show either).
func (a Auth) Wrap(h http.Handler) http.Handler {
	if !a.Configured() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.allows(r) {
			h.ServeHTTP(w, r)
			return
		}
		if a.Username != "" {
			w.Header().Add("WWW-Authenticate", `Basic realm="ferry", charset="UTF-8"`)
		}
		if a.Token != "" {
			w.Header().Add("WWW-Authenticate", `Bearer realm="ferry"`)
		}
		http.Error(w, "401 unauthorized: this ferry status endpoint needs credentials (metrics.username/password_file or metrics.token_file)", http.StatusUnauthorized)
	})
}

func (a Auth) allows(r *http.Request) bool {
	if a.Username != "" {
		if user, pass, ok := r.BasicAuth(); ok {
			// Both compared, always: no early exit on a wrong user.
			u := equal(user, a.Username)
			p := equal(pass, a.Password)
			if u&p == 1 {
				return true
			}
		}
	}
	if a.Token != "" {
		if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			if equal(strings.TrimSpace(tok), a.Token) == 1 {
				return true
			}
		}
	}
	return false
}

// equal compares a and b in constant time and returns 1 when equal.
func equal(a, b string) int {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:])
}
