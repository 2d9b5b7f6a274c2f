//! Projects: create, list and look up by name or id.

use anyhow::{anyhow, ensure, Context, Result};
use sqlx::Row;

use super::{is_unique_violation, now_ms, with_pool, Project, Store};

/// Builds a [`Project`] from a row with the columns of the `projects` table.
macro_rules! project_from_row {
    ($row:expr) => {{
        let row = $row;
        Project {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            plan: row.try_get("plan")?,
            created_at_ms: row.try_get("created_at_ms")?,
        }
    }};
}

impl Store {
    /// Inserts a project with a new random id. Fails with "project NAME already exists" when
    /// the name is taken. The plan name is not checked against the `plans` table.
    pub async fn create_project(&self, name: &str, plan: &str) -> Result<Project> {
        ensure!(
            !name.trim().is_empty(),
            "invalid project name: it must not be empty"
        );
        ensure!(
            !plan.trim().is_empty(),
            "invalid plan name: it must not be empty"
        );

        let project = Project {
            id: format!("proj_{:016x}", rand::random::<u64>()),
            name: name.to_string(),
            plan: plan.to_string(),
            created_at_ms: now_ms(),
        };

        let result = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO projects (id, name, plan, created_at_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(&project.id)
            .bind(&project.name)
            .bind(&project.plan)
            .bind(project.created_at_ms)
            .execute(pool)
            .await
            .map(|_| ())
        });

        match result {
            Ok(()) => Ok(project),
            // The id has 64 random bits, so a collision on it is not worth a retry.
            Err(error) if is_unique_violation(&error) => {
                Err(anyhow!("project {name} already exists"))
            }
            Err(error) => Err(error).with_context(|| format!("failed to insert project {name}")),
        }
    }

    /// Returns all projects, oldest first.
    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        const SQL: &str =
            "SELECT id, name, plan, created_at_ms FROM projects ORDER BY created_at_ms, name";

        let mut projects = Vec::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(SQL)
                .fetch_all(pool)
                .await
                .context("failed to list projects")?;
            for row in &rows {
                projects.push(project_from_row!(row));
            }
        });
        Ok(projects)
    }

    /// Returns the project whose id or name equals `name_or_id`. A match on the id wins.
    pub async fn find_project(&self, name_or_id: &str) -> Result<Option<Project>> {
        const SQL: &str = "SELECT id, name, plan, created_at_ms FROM projects \
                           WHERE id = $1 OR name = $1 \
                           ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END \
                           LIMIT 1";

        let project = with_pool!(self, pool => {
            let row = sqlx::query(SQL)
                .bind(name_or_id)
                .fetch_optional(pool)
                .await
                .with_context(|| format!("failed to look up project {name_or_id}"))?;
            match row {
                Some(row) => Some(project_from_row!(&row)),
                None => None,
            }
        });
        Ok(project)
    }
}
