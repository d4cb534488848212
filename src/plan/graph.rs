//! The dependency graph as plain data: topological order and cycle detection (pure, sync).

/// Nodes `0..n` with `deps[i]` = the nodes `i` needs.
pub struct Graph<'a> {
    pub deps: &'a [Vec<usize>],
}

impl Graph<'_> {
    /// A topological order that keeps the declaration order where the edges allow it,
    /// or a cycle as a list of nodes `[a, b, ..., a]`.
    pub fn order(&self) -> Result<Vec<usize>, Vec<usize>> {
        let n = self.deps.len();
        let mut done = vec![false; n];
        let mut order = Vec::with_capacity(n);
        // Repeatedly take the first node (in declaration order) whose deps are done.
        while order.len() < n {
            let next = (0..n).find(|&i| !done[i] && self.deps[i].iter().all(|&d| done[d]));
            match next {
                Some(i) => {
                    done[i] = true;
                    order.push(i);
                }
                None => return Err(self.find_cycle(&done)),
            }
        }
        Ok(order)
    }

    /// A cycle among the nodes not yet done (there must be one).
    fn find_cycle(&self, done: &[bool]) -> Vec<usize> {
        // Walk from an undone node along undone deps until a node repeats.
        let start = (0..self.deps.len()).find(|&i| !done[i]).unwrap_or(0);
        let mut path = vec![start];
        let mut cur = start;
        loop {
            let next = self.deps[cur]
                .iter()
                .copied()
                .find(|&d| !done[d])
                .unwrap_or(cur);
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut cycle = path[pos..].to_vec();
                cycle.push(next);
                // Print it in the direction of the edges' meaning: a needs b needs ... a.
                return cycle;
            }
            path.push(next);
            cur = next;
        }
    }

    /// Every node reachable from `roots` following dependents (downstream), roots included.
    pub fn downstream(&self, roots: &[usize]) -> Vec<bool> {
        let n = self.deps.len();
        let mut mark = vec![false; n];
        for &r in roots {
            mark[r] = true;
        }
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..n {
                if !mark[i] && self.deps[i].iter().any(|&d| mark[d]) {
                    mark[i] = true;
                    changed = true;
                }
            }
        }
        mark
    }

    /// Every node `roots` depend on (upstream), roots included.
    pub fn upstream(&self, roots: &[usize]) -> Vec<bool> {
        let mut mark = vec![false; self.deps.len()];
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(i) = stack.pop() {
            if !mark[i] {
                mark[i] = true;
                stack.extend(self.deps[i].iter().copied());
            }
        }
        mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_respects_edges_and_declaration() {
        let deps = vec![vec![2], vec![], vec![1]];
        assert_eq!(Graph { deps: &deps }.order(), Ok(vec![1, 2, 0]));
    }

    #[test]
    fn cycle_is_reported_as_a_path() {
        // 0 needs 1, 1 needs 2, 2 needs 1; 3 is fine.
        let deps = vec![vec![1], vec![2], vec![1], vec![]];
        assert_eq!(Graph { deps: &deps }.order(), Err(vec![1, 2, 1]));
    }

    #[test]
    fn reachability() {
        let deps = vec![vec![], vec![0], vec![1], vec![]];
        let g = Graph { deps: &deps };
        assert_eq!(g.downstream(&[1]), vec![false, true, true, false]);
        assert_eq!(g.upstream(&[1]), vec![true, true, false, false]);
    }
}
