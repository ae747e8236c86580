//! Pipelines: applying a spec (stored, then turned into tasks), and the Kafka partitions
//! discovery finds for their sources.

use std::collections::BTreeMap;

use smelter_common::spec::evolution::check_change;
use smelter_common::spec::{PipelineSpec, SourceSpec};
use smelter_common::store::keys;
use smelter_proto::{ApplyPipelineResponse, PipelineDefinition};

use super::Actor;
use super::persist::{StoredPipeline, encode};
use super::tasks::{pipeline_tasks, placement_task};
use crate::Result;
use crate::discovery::KafkaSource;

impl Actor {
    /// Makes `definition` the pipeline's current spec and its tasks the pipeline's tasks;
    /// returns how many tasks it has.
    pub(super) fn install(&mut self, definition: PipelineDefinition) -> Result<usize> {
        let spec = PipelineSpec::parse(&definition.spec_yaml, &definition.origin)?;
        self.tasks.retain(|_, t| t.pipeline != spec.pipeline);
        let tasks = &self.tasks;
        self.placing.retain(|id, _| tasks.contains_key(id));
        let kafka: BTreeMap<String, u32> = self
            .partitions
            .iter()
            .filter(|((p, _), _)| *p == spec.pipeline)
            .map(|((_, source), count)| (source.clone(), *count))
            .collect();
        let tasks = pipeline_tasks(&spec, &kafka);
        let count = tasks.len();
        for task in tasks {
            self.placing
                .insert(task.task_id.clone(), placement_task(&spec, &task));
            self.tasks.insert(task.task_id.clone(), task);
        }
        self.pipelines.insert(spec.pipeline.clone(), definition);
        Ok(count)
    }

    /// Declares or changes a pipeline: stored first, then installed, then placed.
    pub(super) async fn apply(
        &mut self,
        spec_yaml: String,
        origin: String,
    ) -> Result<ApplyPipelineResponse> {
        let spec = PipelineSpec::parse(&spec_yaml, &origin)?;
        // The tables the running spec made must be able to follow the new one (see
        // `smelter_common::spec::evolution`): refused before anything is stored.
        if let Some(current) = self.pipelines.get(&spec.pipeline)
            && let Ok(running) = PipelineSpec::parse(&current.spec_yaml, &current.origin)
        {
            check_change(&running, &spec, &origin)?;
        }
        let revision = self
            .pipelines
            .get(&spec.pipeline)
            .map_or(1, |p| p.revision + 1);
        // A paused pipeline stays paused through a new spec.
        let paused = self.pipelines.get(&spec.pipeline).is_some_and(|p| p.paused);
        let stored = StoredPipeline {
            name: spec.pipeline.clone(),
            spec_yaml,
            origin,
            revision,
            paused,
        };
        let value = encode(&stored)?;
        self.put(&keys::pipeline(&spec.pipeline), value, None)
            .await?;
        let tasks = self.install(stored.into())?;
        tracing::info!(pipeline = %spec.pipeline, revision, tasks, "pipeline applied");
        if spec
            .sources
            .values()
            .any(|s| matches!(s, SourceSpec::Kafka(_)))
        {
            self.discover.notify_one();
        }
        // A changed spec restarts the pipeline's tasks so they pick it up: bump the generation
        // even if placement is unchanged.
        self.rebalance().await;
        self.bump().await;
        Ok(ApplyPipelineResponse {
            pipeline: spec.pipeline,
            revision,
            tasks: tasks as u32,
        })
    }

    /// Pauses or resumes a pipeline: stored first, then published with a new revision, so
    /// that workers restart its units (a paused unit only holds its tasks and reports them
    /// paused, after the running one drained).
    pub(super) async fn set_paused(
        &mut self,
        pipeline: String,
        paused: bool,
    ) -> Result<smelter_proto::SetPipelinePausedResponse> {
        let Some(current) = self.pipelines.get(&pipeline).cloned() else {
            return Err(crate::CoordinatorError::NotFound(format!(
                "no pipeline named {pipeline} (apply it first)"
            )));
        };
        let stored = StoredPipeline {
            name: current.name,
            spec_yaml: current.spec_yaml,
            origin: current.origin,
            revision: current.revision + 1,
            paused,
        };
        let revision = stored.revision;
        self.put(&keys::pipeline(&pipeline), encode(&stored)?, None)
            .await?;
        self.install(stored.into())?;
        tracing::info!(%pipeline, paused, revision, "pipeline paused state changed");
        self.bump().await;
        Ok(smelter_proto::SetPipelinePausedResponse {
            revision,
            generation: self.generation,
        })
    }

    /// The Kafka sources of every pipeline.
    pub(super) fn kafka_sources(&self) -> Vec<KafkaSource> {
        let mut out = Vec::new();
        for definition in self.pipelines.values() {
            let Ok(spec) = PipelineSpec::parse(&definition.spec_yaml, &definition.origin) else {
                continue;
            };
            for (name, source) in &spec.sources {
                if let SourceSpec::Kafka(kafka) = source {
                    out.push((spec.pipeline.clone(), name.clone(), kafka.clone()));
                }
            }
        }
        out
    }

    /// Discovery found `count` partitions: more than known gives new ingest tasks.
    pub(super) async fn partitions_found(&mut self, pipeline: String, source: String, count: u32) {
        let key = (pipeline.clone(), source.clone());
        let known = self.partitions.get(&key).copied().unwrap_or(0);
        // Kafka partitions are only ever added; a smaller answer is a broker's hiccup.
        if count <= known {
            return;
        }
        tracing::info!(%pipeline, %source, from = known, to = count, "kafka partitions discovered");
        if let Err(error) = self
            .put(
                &keys::partitions(&pipeline, &source),
                count.to_string().into_bytes(),
                None,
            )
            .await
        {
            tracing::warn!(%error, "cannot persist partition count; retrying next round");
            return;
        }
        self.partitions.insert(key, count);
        if let Some(definition) = self.pipelines.get(&pipeline).cloned()
            && let Err(error) = self.install(definition)
        {
            tracing::error!(%pipeline, %error, "cannot reinstall pipeline");
        }
        self.rebalance().await;
    }
}
