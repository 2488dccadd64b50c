// A single-member etcd for tests, over go.etcd.io/etcd/server/v3/embed: listens only on loopback,
// skips fsync, logs at warn level. Runs until SIGTERM/SIGINT.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func mustURL(s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		log.Fatalf("bad URL %q: %v", s, err)
	}
	return *u
}

func main() {
	dataDir := flag.String("data-dir", "", "data directory (required)")
	client := flag.String("listen-client-url", "http://127.0.0.1:2379", "client URL (loopback only)")
	peer := flag.String("listen-peer-url", "http://127.0.0.1:2380", "peer URL (loopback only)")
	logLevel := flag.String("log-level", "warn", "debug, info, warn, error")
	quota := flag.Int64("quota-backend-bytes", 2<<30, "backend quota in bytes")
	flag.Parse()
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		os.Exit(2)
	}

	cfg := embed.NewConfig()
	cfg.Name = "realapi"
	cfg.Dir = *dataDir
	cu, pu := mustURL(*client), mustURL(*peer)
	for _, u := range []url.URL{cu, pu} {
		if h := u.Hostname(); h != "127.0.0.1" && h != "::1" {
			log.Fatalf("refusing non-loopback URL %s", u.String())
		}
	}
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ListenMetricsUrls = nil
	cfg.LogLevel = *logLevel
	cfg.WarningUnaryRequestDuration = 300 * time.Millisecond
	cfg.UnsafeNoFsync = true
	cfg.QuotaBackendBytes = *quota
	// Keep history bounded for long test runs, as kube-apiserver's own compaction does.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "5m"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("start etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		log.Fatal("etcd: not ready after 60 s")
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Printf("etcd: %v, shutting down", s)
	case err := <-e.Err():
		log.Printf("etcd: %v", err)
		e.Close()
		os.Exit(1)
	}
	e.Close()
}
