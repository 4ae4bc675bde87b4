package rabbittest

import (
	"testing"
)

// StopNode stops the node for the test and its cleanup starts it again, so
// that the next test finds the cluster whole; PauseNode's cleanup resumes
// the node.
func TestClusterStopNodeRestores(t *testing.T) {
	urls := RequireCluster(t)
	t.Run("stopped", func(t *testing.T) {
		StopNode(t, 3)
		if conn, err := dial(urls[2]); err == nil {
			_ = conn.Close()
			t.Fatalf("node 3 still accepts connections after StopNode")
		}
		if conn, err := dial(urls[0]); err != nil {
			t.Fatalf("node 1 is down too: %v", err)
		} else {
			_ = conn.Close()
		}
	})
	t.Run("paused", func(t *testing.T) {
		PauseNode(t, 2)
	})
	// A node whose rabbit application alone was stopped (StopClusterApps)
	// refuses connections, and ClusterUp, which runs the script's up,
	// gives it back (rabbitmqctl start_app: its VM still runs).
	t.Run("app stopped", func(t *testing.T) {
		acquireCluster(t, true)
		t.Cleanup(func() {
			if err := StartClusterNodes(1); err != nil {
				t.Errorf("rabbittest: %v", err)
			}
		})
		if err := StopClusterApps(1); err != nil {
			t.Fatalf("rabbittest: %v", err)
		}
		if conn, err := dial(urls[0]); err == nil {
			_ = conn.Close()
			t.Fatalf("node 1 still accepts connections after StopClusterApps")
		}
		if _, err := ClusterNodePID(1); err != nil {
			t.Fatalf("node 1's VM stopped too: %v", err)
		}
		if _, err := ClusterUp(); err != nil {
			t.Fatalf("ClusterUp with node 1's application stopped: %v", err)
		}
	})
	if err := allDial(urls); err != nil {
		t.Fatalf("after the subtests' cleanups: %v", err)
	}
	out := ClusterCtl(t, 1, "-q", "eval", "length(rabbit_nodes:all_running()).")
	if out != "3" {
		t.Fatalf("running cluster members after the cleanups: %q, want 3", out)
	}
}
